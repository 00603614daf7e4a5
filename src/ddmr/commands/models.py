"""``ddmr models``: the models shipped with ddmr and their cards."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the full cards as JSON")


def _number(value) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def run(args: argparse.Namespace) -> int:
    import json

    from ddmr.model.shipped import shipped_models

    models = shipped_models()
    if not models:
        print("No model is shipped with this version of ddmr yet. Train one with "
              "`ddmr train --design UW-NSD --data PREPARED -o RUN` and pass "
              "`--model RUN/model.safetensors` to `ddmr register`.")
        return 0
    if args.json:
        print(json.dumps({m.name: m.card().to_dict() for m in models}, indent=2))
        return 0
    for model in models:
        summary = model.card().summary()
        validation = ", ".join(f"{k} {_number(v)}" for k, v in summary["validation"].items())
        print(f"{model.name}")
        print(f"  design      {summary['design']}")
        print(f"  input size  {summary['input_size']}  ({_number(summary['parameters'])} "
              "parameters)")
        if summary["best_val_loss"] is not None or validation:
            print(f"  validation  best loss {_number(summary['best_val_loss'])}"
                  + (f"; {validation}" if validation else ""))
        for label, scores_of in (("held-out", summary["evaluation"]),
                                 ("between", summary["inter_subject"])):
            for method, scores in scores_of.items():
                print(f"  {label:<11} {method:<8} DSC {_number(scores.get('dsc'))}, centroid "
                      f"TRE {_number(scores.get('tre'))} mm, folding "
                      f"{_number(scores.get('folding'))} %")
        print(f"  training    {_number(summary['steps'])} steps, {_number(summary['hours'])} h; "
              f"{summary['command'] or '-'}")
        print(f"  file        {model.path}")
    return 0
