"""Ship a trained model inside the package: score it on stored held-out pairs, add the
scores and the learning curve to its card, and write it to ``src/ddmr/model/NAME``.

    python scripts/ship_model.py RUN_DIR --name brain-t1-cpu --stored-pairs PAIRS_DIR \
        [--curve benchmarks/curves/NAME]

RUN_DIR is a ``ddmr train`` run directory (its ``model.safetensors`` and CSV logs);
PAIRS_DIR a ``ddmr pairs`` folder of held-out subjects. The model is compared on those
pairs with no registration and with DDMR's affine stage alone (what its own pre-alignment
does before the network), so the card says what the network adds.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from ddmr.commands.renamed import add_renamed
from ddmr.evaluate.runner import evaluate
from ddmr.evaluate.tables import summarise
from ddmr.model.file import load_model, save_model

MODELS = Path(__file__).resolve().parents[1] / "src" / "ddmr" / "model"
METRICS = ("dsc", "tre", "dense_tre", "hd95", "folding", "seconds")


def learning_curve(run: Path) -> list[dict[str, float]]:
    """Held-out (validation) DSC and field error against training hours, all segments."""
    rows = []
    for log in sorted(run.glob("logs/run*/metrics.csv")):
        frame = pd.read_csv(log)
        if "val/dice" not in frame:
            continue
        for _, row in frame.dropna(subset=["val/dice"]).iterrows():
            hours = row.get("time/val_elapsed_h")
            rows.append({"step": int(row["step"]),
                         "hours": round(float(hours), 4) if pd.notna(hours) else math.nan,
                         "dice": round(float(row["val/dice"]), 4),
                         "dice_affine": round(float(row.get("val/dice_affine", math.nan)), 4),
                         "dice_before": round(float(row["val/dice_before"]), 4),
                         "field_error_mm": round(float(row.get("val/field_error_mm",
                                                               math.nan)), 4)})
    return rows


def write_curve(curve: list[dict[str, float]], evaluation: dict[str, dict[str, float]],
                stem: Path) -> None:
    """The learning curve as ``stem.csv`` and ``stem.png``: validation DSC (with the affine
    stage's and no registration's) and residual field error against training hours; the
    held-out test DSC of the shipped model as a marker at the end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(curve)
    stem.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(stem.with_suffix(".csv"), index=False)
    by_hours = bool(frame["hours"].notna().all())
    x = frame["hours"] if by_hours else frame["step"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(x, frame["dice"], label="network (validation)")
    left.plot(x, frame["dice_affine"], "--", label="affine stage alone (validation)")
    left.plot(x, frame["dice_before"], ":", label="no registration (validation)")
    shipped = [v for k, v in evaluation.items() if k not in ("none", "affine")]
    if shipped and "dsc" in shipped[0]:
        left.plot([x.iloc[-1]], [shipped[0]["dsc"]], "k*", markersize=10,
                  label="selected checkpoint on the held-out test pairs")
    left.set_xlabel("training hours" if by_hours else "step")
    left.set_ylabel("mean label DSC")
    left.legend(fontsize=7)
    right.plot(x, frame["field_error_mm"])
    right.set_xlabel(left.get_xlabel())
    right.set_ylabel("residual field error (mm, validation)")
    figure.tight_layout()
    figure.savefig(stem.with_suffix(".png"), dpi=110)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="ddmr train run directory")
    parser.add_argument("--name", required=True, help="shipped model name")
    stored = parser.add_argument("--stored-pairs", type=Path, metavar="PAIRS_DIR",
                                 help="the pairs folder made by ddmr pairs (required)")
    add_renamed(parser, "--pairs", stored)  # the old name, for one release
    parser.add_argument("--command", help="the training command, for the card")
    parser.add_argument("--curve", type=Path,
                        help="also write the learning curve as CURVE.csv and CURVE.png")
    args = parser.parse_args()
    if args.stored_pairs is None:
        parser.error("the following arguments are required: --stored-pairs")

    source = args.run / "model.safetensors"
    loaded = load_model(source)
    results = evaluate(args.stored_pairs, [source], baselines=("none", "affine"), progress=True)
    summary = summarise(results, [m for m in METRICS if m in results])
    evaluation = {}
    for _, row in summary.iterrows():
        evaluation[str(row["method"])] = {
            m: round(float(row[f"{m}_mean"]), 5) for m in METRICS if f"{m}_mean" in row}
    card = dict(loaded.card)
    card["name"] = args.name
    card["evaluation"] = {
        "pairs": str(args.stored_pairs), "n_pairs": int(results["pair"].nunique()),
        "methods": evaluation,
        "meaning": "means over held-out pairs (bundled cohort test heads, the paper's "
                   "synthetic deformations); 'affine' is DDMR's affine stage alone",
    }
    card["learning_curve"] = learning_curve(args.run)
    if args.command:
        card["command"] = args.command
    target = save_model(MODELS / f"{args.name}.safetensors", loaded.network, card)
    if args.curve is not None:
        write_curve(card["learning_curve"], evaluation, args.curve)
    print(pd.DataFrame(evaluation).T.to_string())
    print(f"shipped -> {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
