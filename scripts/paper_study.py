"""The paper study's tables, tests and figures from a full demo folder (docs/paper-study.md).

    ddmr demo -o runs/paper-study && ddmr demo -o runs/paper-study --experiment transfer
    python scripts/paper_study.py runs/paper-study [-o docs/paper-study]

Writes ``results.md`` (the paper's Tables 2 and 5 beside ours, mean ± sd per method and
pair kind; the paper's claims as one-sided Mann-Whitney U tests with Benjamini-Hochberg
correction; Tukey HSD without ``none``), ``learning_curves.png`` (validation Dice of
every run) and copies the demo report's box plots and overlays into the output folder.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from ddmr import stats
from ddmr.metrics import HIGHER_IS_BETTER

DESIGNS = ("BL-N", "BL-NS", "SG-ND", "SG-NSD", "UW-NSD", "UW-NSDH")
TRANSFER = ("from scratch", "fine-tuned (full)", "fine-tuned (two-step)")
METRICS = ("ssim", "ncc", "dsc", "hd95", "tre", "seconds")
#: The paper's Table 2 (IXI brains) and Table 5 (Oslo-CoMet CT, two-step fine-tuning):
#: mean, sd of SSIM, NCC, DSC, HD95 (mm), TRE (mm), runtime (s).
PAPER_IXI = {
    "BL-N": [(0.23, 0.16), (0.52, 0.12), (0.03, 0.01), (100.26, 27.91), (29.47, 8.46),
             (0.83, 0.77)],
    "BL-NS": [(0.25, 0.16), (0.53, 0.12), (0.02, 0.01), (138.19, 23.48), (30.06, 9.07),
              (0.73, 0.56)],
    "SG-ND": [(0.45, 0.24), (0.46, 0.10), (0.61, 0.08), (2.15, 0.54), (1.08, 0.39),
              (0.82, 0.58)],
    "SG-NSD": [(0.46, 0.24), (0.46, 0.11), (0.61, 0.07), (2.10, 0.49), (1.07, 0.37),
               (0.74, 0.64)],
    "UW-NSD": [(0.47, 0.24), (0.46, 0.11), (0.63, 0.08), (2.03, 0.51), (0.97, 0.36),
               (0.72, 0.59)],
    "UW-NSDH": [(0.47, 0.24), (0.46, 0.11), (0.61, 0.07), (2.14, 0.52), (1.06, 0.36),
                (0.75, 0.59)],
    "none": [(0.45, 0.21), (0.24, 0.07), (0.07, 0.06), (18.73, 4.88), (11.53, 3.01),
             None],
}
PAPER_CT = {  # Table 3 (from scratch), Table 4 (full), Table 5 (two-step): UW-NSD rows
    "from scratch": [(0.54, 0.13), (0.11, 0.06), (0.26, 0.07), (18.47, 5.34), (11.52, 3.32),
                     (0.77, 1.49)],
    "fine-tuned (full)": [(0.58, 0.12), (0.14, 0.06), (0.48, 0.11), (7.84, 3.17),
                          (4.05, 2.41), (0.76, 1.47)],
    "fine-tuned (two-step)": [(0.60, 0.11), (0.15, 0.06), (0.53, 0.13), (6.97, 2.83),
                              (3.40, 1.91), (0.77, 1.48)],
    "SyN": [(0.61, 0.13), (0.20, 0.07), (0.49, 0.01), (9.62, 1.57), (22.34, 4.96),
            (10.01, 3.69)],
    "SyNCC": [(0.63, 0.13), (0.20, 0.07), (0.49, 0.01), (9.64, 1.61), (22.31, 5.04),
              (323.81, 87.13)],
    "none": [(0.60, 0.13), (0.09, 0.05), (0.24, 0.08), (19.06, 4.89), (11.86, 2.75), None],
}


def _cell(values: pd.Series) -> str:
    values = values.to_numpy(dtype=np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return "-"
    sd = values.std(ddof=1) if values.size > 1 else float("nan")
    return f"{values.mean():.2f} ± {sd:.2f}"


def _paper_cell(value) -> str:
    return "-" if value is None else f"{value[0]:.2f} ± {value[1]:.2f}"


def ours_table(frame: pd.DataFrame, order: list[str]) -> str:
    methods = [m for m in order if m in set(frame["method"])]
    rows = [[m, *(_cell(frame.loc[frame["method"] == m, c]) if c in frame else "-"
                  for c in METRICS), str(int((frame["method"] == m).sum()))] for m in methods]
    return stats.markdown_table(["method", "SSIM", "NCC", "DSC", "HD95 (mm)", "TRE (mm)",
                                 "time (s)", "pairs"], rows)


def paper_table(paper: dict[str, list]) -> str:
    headers = ["method", "SSIM", "NCC", "DSC", "HD95 (mm)", "TRE (mm)", "time (s)"]
    return stats.markdown_table(headers, [[m, *map(_paper_cell, v)] for m, v in paper.items()])


def order_of(models: tuple[str, ...]) -> list[str]:
    """Each model then the same +engine, then the baselines."""
    return [n for m in models for n in (m, f"{m}+engine")] + ["SyN", "SyNCC", "affine", "none"]


def claims(frame: pd.DataFrame, contrasts: list[tuple[str, str]], metric: str) -> str:
    present = set(frame["method"])
    wanted = [stats.Contrast(a, b) for a, b in contrasts if a in present and b in present]
    if not wanted:
        return "no contrast: the methods are missing"
    table = stats.contrast_tests(frame, wanted, metric, HIGHER_IS_BETTER[metric])
    return stats.contrasts_markdown(table)


def tukey(frame: pd.DataFrame, metric: str) -> str:
    """Tukey HSD across the six designs' networks (the paper's test 1)."""
    methods = [m for m in DESIGNS if m in set(frame["method"])]
    try:
        return stats.tukey_markdown(stats.tukey_hsd(frame, metric, methods=methods))
    except ValueError as error:
        return f"not computed: {error}"


def learning_curves(demo: Path, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ddmr.train.plots import read_metrics

    runs = {d: demo / "brain" / "runs" / d for d in DESIGNS}
    runs.update({f"CT {name}": demo / "transfer" / "runs" / folder for name, folder in
                 (("scratch", "scratch"), ("full", "full"), ("two-step", "two-step"))})
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    drawn = False
    for name, rundir in runs.items():
        frame = read_metrics(rundir)
        if frame.empty or "val/dice" not in frame:
            continue
        data = frame[["step", "val/dice"]].dropna()
        axis = axes[1] if name.startswith("CT") else axes[0]
        axis.plot(data["step"], data["val/dice"], marker="o", ms=3, label=name)
        drawn = True
    if not drawn:
        plt.close(figure)
        return None
    for axis, title in zip(axes, ("brain: the six designs", "CT: UW-NSD three ways"),
                           strict=True):
        axis.set_title(title)
        axis.set_xlabel("optimiser step")
        axis.set_ylabel("validation Dice (same-subject pairs)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path, help="a full demo folder (ddmr demo -o ...)")
    parser.add_argument("-o", "--output", type=Path,
                        default=Path(__file__).resolve().parents[1] / "docs" / "paper-study")
    args = parser.parse_args()
    demo, out = args.demo, args.output
    out.mkdir(parents=True, exist_ok=True)
    sections = ["# Paper study: generated tables",
                f"Made by `python scripts/paper_study.py {demo}` from the demo's "
                "`per_pair.csv` files. Means ± sd over pairs. `+engine`: the model's field "
                "refined by the registration engine at its default budget.", ""]
    brain = pd.read_csv(demo / "brain" / "results" / "per_pair.csv")
    sections += ["## Brain, same-subject pairs (the paper's protocol; Table 2)", "",
                 "Ours (the bundled cohort's held-out heads):", "",
                 ours_table(brain, order_of(DESIGNS)), "",
                 "The paper's (IXI, 128^3, GPU):", "", paper_table(PAPER_IXI), ""]
    for metric in ("tre", "dsc"):
        sections += [f"### The paper's claims on {metric.upper()} (one-sided Mann-Whitney "
                     "U, BH over the set)", "",
                     claims(brain, [("SG-ND", "BL-N"), ("SG-NSD", "BL-N"), ("SG-ND", "BL-NS"),
                                    ("SG-NSD", "BL-NS"), ("BL-NS", "BL-N"),
                                    ("UW-NSD", "SG-NSD"), ("UW-NSDH", "UW-NSD"),
                                    ("UW-NSD", "SyN"), ("SG-NSD", "SyN"),
                                    ("UW-NSD+engine", "SyN"), ("UW-NSD+engine", "UW-NSD")],
                            metric), "",
                     f"### Tukey HSD on {metric.upper()} across the six designs (networks "
                     "alone; `none` apart)", "",
                     tukey(brain, metric), ""]
    inter_file = demo / "brain" / "results-inter" / "per_pair.csv"
    if inter_file.is_file():
        inter = pd.read_csv(inter_file)
        sections += ["## Brain, between people (inter-subject pairs of the held-out heads)",
                     "", "TRE here is the distance between label centroids.", "",
                     ours_table(inter, order_of(DESIGNS)), ""]
    transfer_file = demo / "transfer" / "results" / "per_pair.csv"
    if transfer_file.is_file():
        ct = pd.read_csv(transfer_file)
        sections += ["## Transfer to CT (UW-NSD; Tables 3-5)", "",
                     "Ours (trained on CT phantoms, tested on pairs made from the two "
                     "bundled real CTs):", "", ours_table(ct, order_of(TRANSFER)), "",
                     "The paper's UW-NSD rows (Oslo-CoMet CT, trained on 41 real CTs):", "",
                     paper_table(PAPER_CT), ""]
        for metric in ("tre", "dsc"):
            sections += [f"### Transfer claims on {metric.upper()}", "",
                         claims(ct, [("fine-tuned (two-step)", "from scratch"),
                                     ("fine-tuned (two-step)", "fine-tuned (full)"),
                                     ("fine-tuned (full)", "from scratch"),
                                     ("fine-tuned (two-step)", "SyN")], metric), ""]
    (out / "results.md").write_text("\n".join(sections) + "\n")
    curves = learning_curves(demo, out / "learning_curves.png")
    for figure in sorted((demo / "report_files").glob("s*_boxplots.png")) + sorted(
            (demo / "report_files").glob("s*_overlay_*.png")):
        shutil.copyfile(figure, out / figure.name)
    print(f"wrote {out / 'results.md'}" + (f" and {curves}" if curves else ""))


if __name__ == "__main__":
    main()
