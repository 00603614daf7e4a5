"""ddmr demo end to end with tiny settings: brain experiment, resume, transfer study."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

import ddmr.demo
from ddmr.cli import main
from ddmr.data.cohort import cohort_ids
from ddmr.demo import QUICK, Demo
from ddmr.errors import ConfigError, InputError

TINY = QUICK.replace(designs=("BL-N", "UW-NSD"), steps=2, size=24, spacing=8.0,
                     unet={"encoder": [4, 8, 8], "head": [4]}, n_pairs=2,
                     profile={"val_pairs": 1, "val_every": 2, "checkpoint_every": 2,
                              "augmentation": {"nonrigid": False}},
                     baselines=("syn", "none"), ants_affine=(5,), ants_syn=(2,),
                     transfer_steps=2, phantoms=5, phantom_shape=(40, 40, 40),
                     phantom_spacing=(9.0, 9.0, 7.5), ct_spacing=6.0, overlay_pairs=1)


def _figures(report: Path) -> tuple[int, list[str]]:
    html = report.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.with_suffix(".md").read_text())
    assert all((report.parent / link).is_file() for link in links)
    return html.count('src="data:image/png;base64,'), links


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo") / "out"
    patch = pytest.MonkeyPatch()
    patch.setattr(ddmr.demo, "QUICK", TINY)
    try:
        assert main(["demo", "--quick", "-o", str(folder)]) == 0
    finally:
        patch.undo()
    return folder


@pytest.mark.slow
def test_brain_demo_report(demo_folder, capsys):
    report = demo_folder / "report.html"
    html = report.read_text()
    methods = {"BL-N", "BL-N+engine", "UW-NSD", "UW-NSD+engine", "SyN", "none"}
    for method in methods:
        assert f">{method}<" in html
    assert "radiological" in html and "TRE (mm)" in html
    # 2 pairs per section: no tests, and why (between people: 1 pair of heads, 2 orderings)
    assert "Tukey HSD" not in html and "No tests: these results hold 2 independent" in html
    assert "1 independent pair of heads (the two orderings" in html
    # both sections ran ANTs with the demo's reduced settings (issue 33, item 4), and say so
    assert html.count("ANTs as run in this section: SyN: affine 5 then Mattes MI SyN 2 "
                      "iterations per level (reduced") == 2
    images, links = _figures(report)
    # box plots + 1 overlay, inter-subject box plots, 4 training plots per run (BL-N, UW-NSD)
    assert images == len(links) == 1 + 1 + 1 + 4 * 2
    results = pd.read_csv(demo_folder / "brain" / "results" / "per_pair.csv")
    assert set(results["method"]) == methods
    assert results["pair"].nunique() == 2
    # between people: the two held-out heads registered to each other, both ways
    inter = pd.read_csv(demo_folder / "brain" / "results-inter" / "per_pair.csv")
    assert set(inter["method"]) == methods
    assert set(inter["subject"]) == {"pycortex-s1<-itk-kmeans", "itk-kmeans<-pycortex-s1"}
    assert inter["dsc"].notna().all()
    assert "Brain MRI between people" in html
    record = json.loads((demo_folder / "demo.json").read_text())
    assert record["experiments"]["brain"]["steps"] == 2


@pytest.mark.slow
def test_demo_resumes_and_refuses(demo_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ddmr.demo, "QUICK", TINY)
    assert main(["demo", "--quick", "-o", str(demo_folder)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("reused") >= 4 and "report ->" in printed
    # other settings for the same experiment, or a folder that is not a demo's
    with pytest.raises(ConfigError):
        Demo(demo_folder, TINY.replace(steps=3)).run("brain")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("mine")
    with pytest.raises(InputError):
        Demo(tmp_path / "other", TINY)
    assert (tmp_path / "other" / "file.txt").is_file()


@pytest.mark.slow
def test_transfer_demo_reuses_brain_model(demo_folder, monkeypatch, capsys):
    monkeypatch.setattr(ddmr.demo, "QUICK", TINY)
    assert main(["demo", "--quick", "--experiment", "transfer", "-o", str(demo_folder)]) == 0
    printed = capsys.readouterr().out
    assert "reused the brain demo's" in printed
    results = pd.read_csv(demo_folder / "transfer" / "results" / "per_pair.csv")
    models = ["from scratch", "fine-tuned (full)", "fine-tuned (two-step)"]
    names = [n for m in models for n in (m, f"{m}+engine")] + ["SyN", "none"]
    assert list(dict.fromkeys(results["method"])) == names
    pairs = json.loads((demo_folder / "transfer" / "pairs" / "pairs.json").read_text())
    assert {p["subject"] for p in pairs["pairs"]} <= set(cohort_ids("ct"))  # real CT
    card = json.loads((demo_folder / "transfer" / "runs" / "two-step" / "model.json")
                      .read_text())
    assert card["finetune"]["mode"] == "two-step"
    html = (demo_folder / "report.html").read_text()
    assert "Transfer learning" in html and "Brain MRI" in html
    for name in names:
        assert f">{name}<" in html
    images, links = _figures(demo_folder / "report.html")
    # brain: 1 + 1 + 1 + 8; transfer: 1 + 1 + 4 * 3
    assert images == len(links) == 11 + 2 + 12
