"""ddmr report: a self-contained HTML page and its Markdown from a tiny evaluation."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ddmr.cli import main
from ddmr.designs import get_design
from ddmr.model.file import save_model
from ddmr.nn import UNet, UNetConfig
from ddmr.report.document import parse_markdown, table_html
from ddmr.report.figures import axial_slice
from ddmr.spatial.grid import Geometry
from train_helpers import make_dataset


def _model(path: Path, design: str) -> Path:
    torch.manual_seed(0)
    card = {"design": get_design(design).to_dict(), "input_size": [24] * 3,
            "label_values": [0, 1, 2]}
    return save_model(path, UNet(UNetConfig(encoder=(4, 8), head=(4,))), card)


def _run_folder(root: Path) -> Path:
    """A run folder with a CSV log only (what ddmr.train.plots reads)."""
    logs = root / "run" / "logs" / "run00"
    logs.mkdir(parents=True)
    steps = np.arange(1, 6)
    lines = ["step,train/loss,train/ncc,weight/ncc,weight/dice,val/loss"]
    lines += [f"{s},{1 / s},{0.5 / s},{1 + 0.1 * s},{1 - 0.1 * s},{2 / s}" for s in steps]
    (logs / "metrics.csv").write_text("\n".join(lines) + "\n")
    return root / "run"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    prepared = make_dataset(root, n=5)
    pairs = root / "pairs"
    assert main(["pairs", "--data", str(prepared), "--n", "2", "--seed", "3", "-o",
                 str(pairs), "--max-translation", "4", "--no-tps"]) == 0
    model = _model(root / "bl.safetensors", "BL-N")
    results = root / "results"
    assert main(["evaluate", "--stored-pairs", str(pairs), "--models", str(model), "--baselines",
                 "syn,none", "--ants-iterations", "10x5/5x2", "-o", str(results)]) == 0
    assert main(["stats", str(results)]) == 0
    return root, results, model


def _images(html: str) -> int:
    return html.count('src="data:image/png;base64,')


def test_report_from_results(evaluated, capsys):
    root, results, model = evaluated
    out = root / "out" / "report.html"
    out.parent.mkdir()
    run = _run_folder(root)
    assert main(["report", str(results), "-o", str(out), "--models", str(model), "--runs",
                 str(run), "--ants-iterations", "10x5/5x2"]) == 0
    assert "report ->" in capsys.readouterr().out
    html = out.read_text()
    # 1 box-plot figure + 1 overlay (pairs found from summary.md) + 4 training plots
    assert _images(html) == 6
    assert "<table>" in html and "TRE (mm)" in html and "<strong>" in html
    assert "radiological" in html
    # 2 pairs: no tests, and the report says why (tests/test_issue33_demo.py has enough)
    assert "Tukey HSD" not in html and "No tests: these results hold 2 independent" in html
    for method in ("BL-N", "SyN", "none"):
        assert f">{method}<" in html
    assert "src=\"http" not in html and "<link" not in html  # no external assets
    markdown = out.with_suffix(".md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(links) == 6
    assert all((out.parent / link).is_file() for link in links)


def test_report_without_models_or_overlays(evaluated):
    root, results, _ = evaluated
    out = root / "plain.html"
    assert main(["report", str(results), "-o", str(out), "--overlay-pairs", "0"]) == 0
    assert _images(out.read_text()) == 1
    # model methods without a model file are named as left out of the overlays
    out2 = root / "nomodel.html"
    assert main(["report", str(results), "-o", str(out2), "--ants-iterations",
                 "10x5/5x2"]) == 0
    html = out2.read_text()
    assert _images(html) == 2 and "no model file given" in html and "BL-N" in html


def test_report_errors(evaluated, tmp_path):
    _, results, _ = evaluated
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "r.html")]) == 2
    assert main(["report", str(results), "-o", str(tmp_path / "r.pdf")]) == 2
    assert main(["report", "-o", str(tmp_path / "r.html")]) == 2


@pytest.mark.parametrize("flip", [False, True])
def test_axial_slices_are_radiological(flip):
    """A blob on the patient's right shows on the image's left; anterior is at the top,
    whatever the voxel axes' orientation (RAS or LPS-like)."""
    shape = (20, 20, 20)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -19.0
    if flip:  # voxel i runs to the left, j to posterior
        affine[0, 0], affine[1, 1] = -2.0, -2.0
        affine[:2, 3] = 19.0
    geometry = Geometry(affine, shape)
    world = np.einsum("ij,jklm->iklm", affine[:3, :3], np.indices(shape)) \
        + affine[:3, 3, None, None, None]
    right = ((world[0] - 12) ** 2 + world[1] ** 2 + world[2] ** 2 < 30).astype(np.float32)
    anterior = ((world[1] - 12) ** 2 + world[0] ** 2 + world[2] ** 2 < 30).astype(np.float32)
    cut = axial_slice(right, geometry)
    rows, cols = np.nonzero(cut > 0.5)
    assert cols.mean() < cut.shape[1] / 2 and abs(rows.mean() - cut.shape[0] / 2) < 3
    cut = axial_slice(anterior, geometry)
    rows, cols = np.nonzero(cut > 0.5)
    assert rows.mean() < cut.shape[0] / 2 and abs(cols.mean() - cut.shape[1] / 2) < 3


def test_markdown_round_trip():
    blocks = parse_markdown("# A\n\ntext\nmore\n\n| a | b |\n|---|---:|\n| **1** | 2 |\n")
    assert [type(b).__name__ for b in blocks] == ["Heading", "Paragraph", "Table"]
    html = table_html(blocks[2].markdown)
    assert "<strong>1</strong>" in html and 'text-align:right">2' in html


def test_overlays_recompute_engine_methods(evaluated):
    from ddmr.evaluate.engine_method import split_engine_name
    from ddmr.evaluate.pairs import PairSet
    from ddmr.evaluate.runner import load_methods
    from ddmr.report.overlays import pair_overlay_rows

    assert split_engine_name("BL-N+engine") == ("BL-N", True)
    assert split_engine_name("+engine") == ("+engine", False)
    assert split_engine_name("BL-N") == ("BL-N", False)
    root, _, model = evaluated
    pair = PairSet(root / "pairs")[0]
    loaded = {"BL-N": load_methods([model])[0]}
    rows, missing = pair_overlay_rows(pair, ["BL-N", "BL-N+engine", "other+engine", "none"],
                                      loaded)
    assert [r.method for r in rows] == ["BL-N", "BL-N+engine", "none"]
    assert missing == ["other+engine"]
    assert not np.allclose(rows[0].warped, rows[1].warped)  # the engine moved the field


def test_box_plots_keep_a_method_without_finite_values(tmp_path):
    """Between people, ``none`` has no HD95 (its labels do not overlap): its box is empty
    and the figure is still drawn."""
    from ddmr.report.figures import boxplot_metrics

    frame = pd.DataFrame({"method": ["SyN", "SyN", "none", "none"],
                          "dsc": [0.84, 0.83, 0.0, 0.0],
                          "hd95": [2.3, 2.4, float("nan"), float("nan")]})
    path = boxplot_metrics(frame, tmp_path / "box.png")
    assert path is not None and path.stat().st_size > 1000
