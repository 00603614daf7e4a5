"""The paper's statistics on per-pair results: Tukey HSD across methods, one-sided
Mann-Whitney U tests for named contrasts with Benjamini-Hochberg correction, and
Markdown tables of the p-values.

Results are a ``pandas.DataFrame`` with one row per (pair, method): a ``method`` column
and one column per metric (the ``per_pair.csv`` that ``ddmr evaluate`` writes).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ALPHA = 0.05
#: Methods that are not learned models (names written by ``ddmr evaluate``).
BASELINES = ("SyN", "SyNCC", "none", "affine")
#: No registration: far from every method, it would widen every Tukey interval (a pooled
#: variance) until no comparison says anything, so it is reported apart.
UNREGISTERED = "none"
#: Fewer independent pairs than this and no test is run: with 2 against 2 values the
#: smallest one-sided Mann-Whitney p is 1/6, and Tukey's pooled variance of a handful of
#: values makes tiny differences "significant".
MIN_INDEPENDENT_PAIRS = 5
#: How an inter-subject pair names its subjects in the ``subject`` column (fixed<-moving).
INTER_ARROW = "<-"


@dataclass(frozen=True)
class Contrast:
    """Hypothesis "``better`` scores better than ``worse``" on a metric (one-sided)."""

    better: str
    worse: str

    @property
    def name(self) -> str:
        return f"{self.better} vs {self.worse}"


def _samples(results: pd.DataFrame, method: str, metric: str) -> np.ndarray:
    values = results.loc[results["method"] == method, metric].to_numpy(dtype=np.float64)
    return values[np.isfinite(values)]


def independent_pairs(results: pd.DataFrame) -> int:
    """How many independent observations the results hold: the unordered pairs of heads
    for inter-subject pairs (``subject`` written ``fixed<-moving``: the two orderings of
    one pair of heads are one observation, not two), else the distinct pairs."""
    if "subject" in results:
        subjects = results["subject"].astype(str)
        if subjects.str.contains(INTER_ARROW, regex=False).all():
            return len({frozenset(s.split(INTER_ARROW, 1)) for s in subjects})
    if "pair" in results:
        return int(results["pair"].nunique())
    return int(results["method"].value_counts().max()) if len(results) else 0


def benjamini_hochberg(pvalues: Sequence[float], alpha: float = ALPHA
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini-Hochberg false discovery rate control -> (reject (N,) bool, adjusted
    p-values (N,)). NaN p-values stay NaN and are never rejected."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=np.float64)
    reject = np.zeros(p.shape, bool)
    adjusted = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        r, a, _, _ = multipletests(p[finite], alpha=alpha, method="fdr_bh")
        reject[finite], adjusted[finite] = r, a
    return reject, adjusted


def mann_whitney(better: Sequence[float], worse: Sequence[float],
                 higher_is_better: bool) -> tuple[float, float]:
    """One-sided Mann-Whitney U test that ``better`` is stochastically better than
    ``worse`` (greater if ``higher_is_better``, else smaller) -> (U statistic, p-value).
    NaN when either sample is empty."""
    from scipy.stats import mannwhitneyu

    a = np.asarray(better, dtype=np.float64)
    b = np.asarray(worse, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return math.nan, math.nan
    result = mannwhitneyu(a, b, alternative="greater" if higher_is_better else "less")
    return float(result.statistic), float(result.pvalue)


def tukey_hsd(results: pd.DataFrame, metric: str = "tre", alpha: float = ALPHA,
              methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Pairwise Tukey HSD of ``metric`` across ``methods`` (all by default).

    Returns one row per pair of methods: group1, group2, meandiff (mean of group2 minus
    mean of group1), p_adj, lower, upper (confidence interval of meandiff), reject.
    Needs at least two methods with two finite values each.
    """
    from statsmodels.stats.multicomp import pairwise_tukeyhsd

    methods = list(methods) if methods is not None else list(dict.fromkeys(results["method"]))
    values, groups = [], []
    for method in methods:
        sample = _samples(results, method, metric)
        if sample.size >= 2:
            values.append(sample)
            groups.extend([method] * sample.size)
    if len(values) < 2:
        raise ValueError(f"Tukey HSD on {metric} needs two methods with two values each")
    test = pairwise_tukeyhsd(np.concatenate(values), np.asarray(groups), alpha=alpha)
    pairs = list(itertools.combinations(test.groupsunique, 2))
    rows = [{"group1": str(g1), "group2": str(g2), "meandiff": float(test.meandiffs[k]),
             "p_adj": float(test.pvalues[k]), "lower": float(test.confint[k][0]),
             "upper": float(test.confint[k][1]), "reject": bool(test.reject[k])}
            for k, (g1, g2) in enumerate(pairs)]
    return pd.DataFrame(rows)


def default_contrasts(methods: Iterable[str]) -> list[Contrast]:
    """The paper's contrasts among the methods present: each SG design vs each BL design
    (segmentation guidance), each UW vs each SG (uncertainty weighting), and each learned
    model vs SyN and vs SyNCC. Designs are recognised by their name's prefix."""
    methods = list(dict.fromkeys(methods))
    models = [m for m in methods if m not in BASELINES]

    def family(prefix: str) -> list[str]:
        return [m for m in models if m.upper().startswith(prefix)]

    out = [Contrast(s, b) for s in family("SG") for b in family("BL")]
    out += [Contrast(u, s) for u in family("UW") for s in family("SG")]
    out += [Contrast(m, ants) for ants in ("SyN", "SyNCC") if ants in methods for m in models]
    return out


def contrast_tests(results: pd.DataFrame, contrasts: Sequence[Contrast], metric: str = "tre",
                   higher_is_better: bool = False, alpha: float = ALPHA) -> pd.DataFrame:
    """One-sided Mann-Whitney U per contrast, Benjamini-Hochberg corrected over the set.

    Returns one row per contrast: contrast, better, worse, n_better, n_worse, u, p,
    p_bh, significant (p_bh < alpha).
    """
    rows = []
    for contrast in contrasts:
        a = _samples(results, contrast.better, metric)
        b = _samples(results, contrast.worse, metric)
        u, p = mann_whitney(a, b, higher_is_better)
        rows.append({"contrast": contrast.name, "better": contrast.better,
                     "worse": contrast.worse, "n_better": a.size, "n_worse": b.size,
                     "u": u, "p": p})
    table = pd.DataFrame(rows, columns=["contrast", "better", "worse", "n_better", "n_worse",
                                        "u", "p"])
    reject, adjusted = benjamini_hochberg(table["p"].to_numpy(), alpha)
    table["p_bh"] = adjusted
    table["significant"] = reject
    return table


def format_p(p: float) -> str:
    """A p-value as the paper prints it: '<0.001' or three decimals ('-' for NaN)."""
    if not math.isfinite(p):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table from strings."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def tukey_markdown(table: pd.DataFrame) -> str:
    """Markdown of :func:`tukey_hsd`'s result (significant p-values in bold)."""
    rows = []
    for r in table.itertuples():
        p = format_p(r.p_adj)
        rows.append([r.group1, r.group2, f"{r.meandiff:.3f}", f"[{r.lower:.3f}, {r.upper:.3f}]",
                     f"**{p}**" if r.reject else p])
    return markdown_table(["method 1", "method 2", "mean diff (2 - 1)", "95% CI", "p (adj.)"],
                          rows)


def contrasts_markdown(table: pd.DataFrame) -> str:
    """Markdown of :func:`contrast_tests`'s result (significant corrected p in bold)."""
    rows = []
    for r in table.itertuples():
        p_bh = format_p(r.p_bh)
        rows.append([r.contrast, f"{r.n_better}/{r.n_worse}", format_p(r.p),
                     f"**{p_bh}**" if r.significant else p_bh])
    return markdown_table(["contrast (one-sided)", "n", "p", "p (BH)"], rows)


def _too_few(results: pd.DataFrame, n: int, min_pairs: int) -> str:
    """Why no test was run, in one paragraph."""
    inter = ("subject" in results and len(results)
             and results["subject"].astype(str).str.contains(INTER_ARROW, regex=False).all())
    unit = (f"{n} independent pair{'s' if n != 1 else ''} of heads (the two orderings of one "
            "pair of heads, A<-B and B<-A, are one observation, not two)" if inter else
            f"{n} independent pair{'s' if n != 1 else ''}")
    return (f"No tests: these results hold {unit}, fewer than {min_pairs}. With so few, "
            "a p-value says nothing (with 2 values against 2 the smallest one-sided "
            "Mann-Whitney p is 0.17, and Tukey's pooled variance of a handful of values "
            "calls tiny differences significant). Compare the means in the summary table, "
            "or evaluate more pairs.")


def write_statistics(results: pd.DataFrame, folder: Path, metric: str = "tre",
                     alpha: float = 0.05, contrasts: Sequence[Contrast] | None = None,
                     source: str | None = None,
                     min_pairs: int = MIN_INDEPENDENT_PAIRS) -> str:
    """Write ``stats_<metric>.md`` (Tukey HSD across the methods that register, one-sided
    Mann-Whitney U for ``contrasts`` with Benjamini-Hochberg correction, and apart from
    them each method against :data:`UNREGISTERED`), ``stats_<metric>_contrasts.csv``,
    ``stats_<metric>_tukey.csv`` and ``stats_<metric>_vs_none.csv`` into ``folder``
    (atomically); returns the Markdown.

    ``results`` holds one row per pair and method (``ddmr evaluate``'s per_pair.csv);
    ``contrasts`` default to :func:`default_contrasts` of the methods present. With fewer
    than ``min_pairs`` :func:`independent_pairs`, no test is run: ``stats_<metric>.md``
    says why, and the CSVs of an earlier run are removed.
    """
    from ddmr.io.files import atomic_path
    from ddmr.metrics import HIGHER_IS_BETTER

    methods = list(dict.fromkeys(results["method"]))
    if contrasts is None:
        contrasts = default_contrasts(methods)
    higher = HIGHER_IS_BETTER.get(metric, HIGHER_IS_BETTER.get(metric.split("_")[0], False))
    title = f"# Statistics on {metric}" + (f" ({source})" if source else "")
    stem = f"stats_{metric}"
    n = independent_pairs(results)
    if n < min_pairs:
        text = "\n".join([title, "", _too_few(results, n, min_pairs), ""])
        for suffix in ("contrasts", "tukey", f"vs_{UNREGISTERED}"):  # an earlier run's tests
            (folder / f"{stem}_{suffix}.csv").unlink(missing_ok=True)
        with atomic_path(folder / f"{stem}.md") as temporary:
            temporary.write_text(text)
        return text
    sections = [title, ""]
    registered = [m for m in methods if m != UNREGISTERED]
    try:
        tukey = tukey_hsd(results, metric, alpha, registered)
    except ValueError as error:
        tukey = None
        sections += ["## Tukey HSD", "", f"not computed: {error}", ""]
    else:
        sections += [f"## Tukey HSD across the methods that register (alpha {alpha}; "
                     f"`{UNREGISTERED}` apart, below)", "", tukey_markdown(tukey), ""]
    better = "higher" if higher else "lower"
    tests = contrast_tests(results, contrasts, metric, higher, alpha)
    sections += [f"## One-sided Mann-Whitney U, Benjamini-Hochberg corrected "
                 f"({better} is better)", "",
                 contrasts_markdown(tests) if len(tests) else "no contrasts", ""]
    unregistered = None
    start = _samples(results, UNREGISTERED, metric)
    if start.size and registered:
        unregistered = contrast_tests(results, [Contrast(m, UNREGISTERED) for m in registered],
                                      metric, higher, alpha)
        sections += [f"## Against no registration (`{UNREGISTERED}`: mean {start.mean():.3f}, "
                     f"sd {start.std(ddof=1) if start.size > 1 else float('nan'):.3f}, "
                     f"n {start.size}), one-sided Mann-Whitney U, Benjamini-Hochberg "
                     "corrected apart", "", contrasts_markdown(unregistered), ""]
    text = "\n".join(sections)
    outputs = [(folder / f"{stem}.md", text),
               (folder / f"{stem}_contrasts.csv", tests.to_csv(index=False))]
    if tukey is not None:
        outputs.append((folder / f"{stem}_tukey.csv", tukey.to_csv(index=False)))
    if unregistered is not None:
        outputs.append((folder / f"{stem}_vs_{UNREGISTERED}.csv",
                        unregistered.to_csv(index=False)))
    for path, content in outputs:
        with atomic_path(path) as temporary:
            temporary.write_text(content)
    return text
