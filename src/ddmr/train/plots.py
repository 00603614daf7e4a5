"""Training curves and uncertainty-weight evolution (the paper's Figs A-L) from the CSV
logs of a run directory."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ddmr.io.files import write_errors


def read_metrics(rundir: str | Path) -> pd.DataFrame:
    """All ``logs/*/metrics.csv`` of a run (one per resumed segment), ordered by step."""
    files = sorted(Path(rundir).glob("logs/*/metrics.csv"))
    if not files:
        return pd.DataFrame()
    frames = [pd.read_csv(f) for f in files]
    return pd.concat(frames, ignore_index=True).sort_values("step", kind="stable")


def _plot_columns(frame: pd.DataFrame, columns: list[str], title: str, ylabel: str,
                  path: Path, log: bool = False) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ddmr.io.files import atomic_path

    columns = [c for c in columns if c in frame and frame[c].notna().any()]
    if not columns:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for column in columns:
        data = frame[["step", column]].dropna()
        ax.plot(data["step"], data[column], label=column.split("/", 1)[-1],
                marker="o" if len(data) < 30 else None, markersize=3)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        with atomic_path(path) as temporary:  # a full disk: one line, no half-written PNG
            fig.savefig(temporary, format="png")
    finally:
        plt.close(fig)
    return path


def plot_training(rundir: str | Path) -> list[Path]:
    """Write ``plots/training_loss.png``, ``plots/loss_terms.png``, ``plots/validation.png``
    and ``plots/weights.png`` into the run directory; returns the files written."""
    rundir = Path(rundir)
    frame = read_metrics(rundir)
    if frame.empty:
        return []
    out = rundir / "plots"
    with write_errors(out):
        out.mkdir(exist_ok=True)
    terms = [c for c in frame.columns if c.startswith("train/") and c != "train/loss"]
    weights = [c for c in frame.columns if c.startswith("weight/")]
    validation = [c for c in frame.columns if c.startswith("val/")]
    written = [
        _plot_columns(frame, ["train/loss"], "Training loss (weighted total)", "loss",
                      out / "training_loss.png"),
        _plot_columns(frame, terms, "Unweighted loss terms", "value", out / "loss_terms.png"),
        _plot_columns(frame, validation, "Validation on fixed pairs", "value",
                      out / "validation.png"),
        _plot_columns(frame, weights, "Loss weights", "weight", out / "weights.png", log=True),
    ]
    return [p for p in written if p is not None]
