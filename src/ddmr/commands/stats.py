"""``ddmr stats RESULTS``: Tukey HSD and one-sided Mann-Whitney U tests (Benjamini-Hochberg
corrected) on the per-pair results of ``ddmr evaluate``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", type=Path, help="folder written by ddmr evaluate "
                        "(or its per_pair.csv)")
    parser.add_argument("--metric", default="tre", help="metric to test (default: tre)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level")
    parser.add_argument("--contrast", action="append", metavar="BETTER:WORSE",
                        help="a one-sided contrast (repeatable); default: SG vs BL, UW vs SG, "
                        "every model vs SyN and SyNCC, among the methods present")


def _is_number(value: object) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from ddmr import stats
    from ddmr.errors import ConfigError, InputError
    from ddmr.evaluate.tables import read_per_pair

    results, csv = read_per_pair(args.results)
    if args.metric not in results:
        raise InputError(f"{csv}: needs the columns 'method' and {args.metric!r}")
    if not pd.api.types.is_numeric_dtype(results[args.metric]) \
            or pd.api.types.is_bool_dtype(results[args.metric]):
        example = next((v for v in results[args.metric] if not _is_number(v)), None)
        raise InputError(f"{csv}: column {args.metric!r} is not numeric (e.g. {example!r}); "
                         "choose a metric column with --metric")
    if not 0 < args.alpha < 1:
        raise ConfigError(f"--alpha must be in (0, 1), got {args.alpha}")
    methods = list(dict.fromkeys(results["method"]))
    if args.contrast:
        contrasts = []
        for text in args.contrast:
            better, _, worse = text.partition(":")
            if better not in methods or worse not in methods:
                raise ConfigError(f"--contrast {text}: methods are {', '.join(methods)}")
            contrasts.append(stats.Contrast(better, worse))
    else:
        contrasts = stats.default_contrasts(methods)
    text = stats.write_statistics(results, csv.parent, args.metric, args.alpha, contrasts,
                                  source=str(csv))
    print(text)
    return 0
