"""Statistics against scipy/statsmodels and hand computations; ddmr stats end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ddmr import stats
from ddmr.cli import main


def results_frame(seed=0, n=12):
    rng = np.random.default_rng(seed)
    base = rng.normal(5.0, 1.0, n)
    rows = []
    for method, tre in [("BL-N", base + 3.0), ("SG-NSD", base + 0.2), ("UW-NSD", base.copy()),
                        ("SyN", base + 3.1)]:
        rows += [{"pair": i, "method": method, "tre": float(t), "dsc": 0.5} for i, t in
                 enumerate(tre)]
    return pd.DataFrame(rows)


def test_benjamini_hochberg_by_hand():
    p = [0.01, 0.04, 0.03, 0.20, float("nan")]
    reject, adjusted = stats.benjamini_hochberg(p)
    # sorted 0.01, 0.03, 0.04, 0.20 (m=4): p*m/rank -> .04, .06, .0533, .20, then running min
    expected = [0.04, 0.0533333, 0.0533333, 0.20]
    np.testing.assert_allclose(adjusted[:4], expected, rtol=1e-5)
    assert np.isnan(adjusted[4])
    assert reject.tolist() == [True, False, False, False, False]


def test_mann_whitney_one_sided():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, 20)
    _, p_shift = stats.mann_whitney(a, a + 3.0, higher_is_better=False)
    _, p_wrong_way = stats.mann_whitney(a + 3.0, a, higher_is_better=False)
    _, p_same = stats.mann_whitney(a, a, higher_is_better=False)
    assert p_shift < 0.05 and p_wrong_way > 0.95 and p_same > 0.05
    from scipy.stats import mannwhitneyu

    assert stats.mann_whitney(a + 1, a, True)[1] == pytest.approx(
        mannwhitneyu(a + 1, a, alternative="greater").pvalue)


def test_tukey_matches_statsmodels_and_finds_the_shift():
    from statsmodels.stats.multicomp import pairwise_tukeyhsd

    frame = results_frame()
    table = stats.tukey_hsd(frame, "tre")
    assert len(table) == 6
    reference = pairwise_tukeyhsd(frame["tre"], frame["method"])
    np.testing.assert_allclose(np.sort(table["p_adj"]), np.sort(reference.pvalues))
    row = table[(table.group1 == "BL-N") & (table.group2 == "UW-NSD")].iloc[0]
    assert row.p_adj < 0.05 and row.reject and row.meandiff == pytest.approx(-3.0)
    same = table[{"BL-N", "SyN"} == table[["group1", "group2"]].apply(set, axis=1)].iloc[0]
    assert same.p_adj > 0.05


def test_default_contrasts_and_tests():
    frame = results_frame()
    contrasts = stats.default_contrasts(frame["method"])
    names = [c.name for c in contrasts]
    assert names == ["SG-NSD vs BL-N", "UW-NSD vs SG-NSD", "BL-N vs SyN", "SG-NSD vs SyN",
                     "UW-NSD vs SyN"]
    table = stats.contrast_tests(frame, contrasts, "tre", higher_is_better=False)
    significant = dict(zip(table["contrast"], table["significant"], strict=True))
    assert significant["SG-NSD vs BL-N"] and significant["UW-NSD vs SyN"]
    assert not significant["BL-N vs SyN"]
    assert (table["p_bh"] >= table["p"] - 1e-12).all()
    assert "**" in stats.contrasts_markdown(table)


def test_ddmr_stats_command(tmp_path, capsys):
    results_frame().to_csv(tmp_path / "per_pair.csv", index=False)
    assert main(["stats", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Tukey" in out and "SG-NSD vs BL-N" in out
    assert (tmp_path / "stats_tre.md").is_file()
    assert (tmp_path / "stats_tre_contrasts.csv").is_file()
    assert main(["stats", str(tmp_path), "--contrast", "UW-NSD:nope"]) == 2
    assert main(["stats", str(tmp_path / "missing")]) == 2


def test_none_is_reported_apart_and_no_longer_hides_differences(tmp_path):
    """A far-off ``none`` (TRE ~ 15 mm, sd 6) inflates Tukey's pooled variance: with it,
    the 0.8 mm gap between two models is not significant; reported apart, it is."""
    rng = np.random.default_rng(3)
    n = 30
    rows = [{"pair": i, "method": m, "tre": float(t)}
            for m, values in [("BL-N", rng.normal(3.0, 0.6, n)),
                              ("UW-NSD", rng.normal(2.2, 0.6, n)),
                              ("none", rng.normal(15.0, 6.0, n))]
            for i, t in enumerate(values)]
    frame = pd.DataFrame(rows)
    pooled = stats.tukey_hsd(frame, "tre")
    pair = (pooled["group1"] == "BL-N") & (pooled["group2"] == "UW-NSD")
    assert not pooled.loc[pair, "reject"].item()  # the failure issue 23 describes
    text = stats.write_statistics(frame, tmp_path, "tre")
    apart = pd.read_csv(tmp_path / "stats_tre_tukey.csv")
    assert "none" not in set(apart["group1"]) | set(apart["group2"])
    assert apart.loc[(apart["group1"] == "BL-N") & (apart["group2"] == "UW-NSD"),
                     "reject"].item()
    versus = pd.read_csv(tmp_path / "stats_tre_vs_none.csv")
    assert list(versus["contrast"]) == ["BL-N vs none", "UW-NSD vs none"]
    assert versus["significant"].all()
    assert "Against no registration" in text


def test_none_without_finite_values_is_left_out(tmp_path):
    frame = pd.DataFrame({"method": ["A"] * 3 + ["B"] * 3 + ["none"] * 3,
                          "tre": [1.0, 1.2, 1.1, 2.0, 2.2, 2.1] + [float("nan")] * 3})
    text = stats.write_statistics(frame, tmp_path, "tre")
    assert "Against no registration" not in text and "Tukey" in text
    assert not (tmp_path / "stats_tre_vs_none.csv").exists()
