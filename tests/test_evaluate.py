"""ddmr evaluate end to end on tiny data: models and baselines on the same stored pairs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ddmr import metrics
from ddmr.cli import main
from ddmr.designs import get_design
from ddmr.evaluate.pairs import PairSet
from ddmr.evaluate.runner import load_methods
from ddmr.evaluate.tables import summarise, summary_markdown
from ddmr.model.file import save_model
from ddmr.nn import UNet, UNetConfig
from train_helpers import make_dataset


def tiny_model(path, design, size=24, seed=0):
    torch.manual_seed(seed)
    card = {"design": get_design(design).to_dict(), "input_size": [size] * 3,
            "label_values": [0, 1, 2]}
    return save_model(path, UNet(UNetConfig(encoder=(4, 8), head=(4,))), card)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    prepared = make_dataset(root, n=5)
    assert main(["pairs", "--data", str(prepared), "--n", "2", "--seed", "3", "-o",
                 str(root / "pairs"), "--max-translation", "4", "--no-tps"]) == 0
    models = [tiny_model(root / "a.safetensors", "BL-N"),
              tiny_model(root / "b.safetensors", "BL-N", size=16, seed=1),
              tiny_model(root / "c.safetensors", "SG-NSD", seed=2)]
    return root, models


def test_method_names_follow_design_or_stem(workspace):
    _, models = workspace
    assert [m.name for m in load_methods(models)] == ["a", "b", "SG-NSD"]
    assert [m.name for m in load_methods(models[:1])] == ["BL-N"]


def test_evaluate_end_to_end(workspace, capsys):
    root, models = workspace
    out = root / "results"
    argv = ["evaluate", "--stored-pairs", str(root / "pairs"), "--models", *map(str, models),
            "--baselines", "syn,none", "--ants-iterations", "10x5/5x2", "-o", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    results = pd.read_csv(out / "per_pair.csv")
    names = ["a", "b", "SG-NSD", "SyN", "none"]
    assert len(results) == 2 * len(names)
    assert list(dict.fromkeys(results["method"])) == names
    for column in ("dsc", "hd", "hd95", "tre", "dense_tre", "ncc", "ssim", "folding", "sdlogj",
                   "seconds"):
        assert column in results
    assert (results.loc[results["method"] != "none", "seconds"] > 0).all()
    # "none" scores the unwarped moving labels
    for pair in PairSet(root / "pairs"):
        row = results[(results["pair"].astype(str).str.zfill(4) == pair.name)
                      & (results["method"] == "none")].iloc[0]
        expected = np.nanmean(metrics.dice_per_label(pair.fixed_labels, pair.moving_labels))
        assert row["dsc"] == pytest.approx(expected)
        assert row["tre"] == pytest.approx(metrics.centroid_tre(
            pair.fixed_labels, pair.moving_labels, pair.spacing))
    # the model rows hold the scores of each model's own field on each pair, recomputed
    # here from its prediction with the metric definitions
    from ddmr.spatial.warp import warp_labels

    methods = {m.name: m for m in load_methods(models)}
    for pair in PairSet(root / "pairs"):
        for name in ("a", "b", "SG-NSD"):
            row = results[(results["pair"].astype(str).str.zfill(4) == pair.name)
                          & (results["method"] == name)].iloc[0]
            field = methods[name].predict(pair.fixed, pair.moving, pair.spacing)
            warped = warp_labels(torch.from_numpy(pair.moving_labels)[None, None],
                                 torch.from_numpy(field)[None])[0, 0].numpy()
            assert row["dsc"] == pytest.approx(
                np.nanmean(metrics.dice_per_label(pair.fixed_labels, warped)), abs=1e-9)
            assert row["tre"] == pytest.approx(
                metrics.centroid_tre(pair.fixed_labels, warped, pair.spacing), abs=1e-9)
            assert row["folding"] == pytest.approx(metrics.folding_percent(field), abs=1e-9)
            assert row["dense_tre"] == pytest.approx(
                metrics.dense_tre(field, pair.displacement, pair.spacing,
                                  pair.fixed_labels > 0), abs=1e-6)
    table = (out / "summary.md").read_text()
    for name in names:
        assert f"| {name} |" in table
    assert "TRE (mm)" in table and "**" in table and "±" in table
    assert "| SG-NSD |" in printed and "results ->" in printed
    assert (out / "summary.csv").is_file()
    # existing results are refused, stats run on them
    assert main(argv) == 2
    assert main(["stats", str(out)]) == 0
    assert main(["evaluate", "--stored-pairs", str(root / "nope"), "--baselines", "none",
                 "-o", str(root / "r2")]) == 2
    assert main(["evaluate", "--stored-pairs", str(root / "pairs"), "--baselines", "",
                 "-o", str(root / "r2")]) == 2
    assert not (root / "r2").exists()
    # 2 pairs: no test is run, and the statistics say why
    assert "No tests: these results hold 2 independent pairs" in capsys.readouterr().out


def test_summary_bolds_the_best():
    frame = pd.DataFrame({"method": ["x", "x", "y", "y"], "tre": [1.0, 2.0, 3.0, 4.0],
                          "dsc": [0.1, 0.2, 0.8, 0.9]})
    table = summary_markdown(summarise(frame))
    assert "**1.50 ± 0.71**" in table and "**0.85 ± 0.07**" in table
    assert "| y | 3.50 ± 0.71 |" not in table  # columns are in the paper's order: DSC first
    with_reference = pd.concat([frame, pd.DataFrame({"method": ["none"] * 2, "tre": [0.0, 0.0],
                                                     "dsc": [1.0, 1.0]})])
    table = summary_markdown(summarise(with_reference))
    assert "**1.50 ± 0.71**" in table and "**0.85 ± 0.07**" in table
    assert "| none | 1.00 ± 0.00 | 0.00 ± 0.00 |" in table  # the reference is never bold
