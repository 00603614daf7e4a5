"""``ddmr models``: the models shipped with ddmr and their cards."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the full cards as JSON")


def _number(value) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def run(args: argparse.Namespace) -> int:
    import json

    from ddmr.models import card_summary, shipped_models

    models = shipped_models()
    if not models:
        print("No model is shipped with this version of ddmr yet. Train one with "
              "`ddmr train --design UW-NSD --data PREPARED -o RUN` and pass "
              "`--model RUN/model.safetensors` to `ddmr register`.")
        return 0
    if args.json:
        print(json.dumps({m.name: m.card() for m in models}, indent=2))
        return 0
    for model in models:
        summary = card_summary(model.card())
        validation = ", ".join(f"{k} {_number(v)}" for k, v in summary["validation"].items())
        print(f"{model.name}")
        print(f"  design      {summary['design']}")
        print(f"  input size  {summary['input_size']}  ({_number(summary['parameters'])} "
              "parameters)")
        print(f"  validation  best loss {_number(summary['best_val_loss'])}"
              + (f"; {validation}" if validation else ""))
        print(f"  training    {_number(summary['steps'])} steps; {summary['command'] or '-'}")
        print(f"  file        {model.path}")
    return 0
