"""Behaviour unchanged, proven (issue 31): register the same stored pairs with two commits'
code and compare what they return.

    # each commit's tree (a git worktree) on the path, one run each:
    PYTHONPATH=/tmp/before/src python benchmarks/compare_commits.py run -o /tmp/cmp-before
    PYTHONPATH=src python benchmarks/compare_commits.py run -o /tmp/cmp-after
    python benchmarks/compare_commits.py compare /tmp/cmp-before /tmp/cmp-after

``run`` registers the bundled brain pairs (both directions, each image on its own
header) in every configuration of :data:`CONFIGURATIONS` and stores each result's
summary (everything but the seconds) and its fields (the whole displacement and the
inverse, mm). ``compare`` prints, per registration, whether the summaries are equal and
how far apart the fields are, and exits 1 when a summary differs (numbers beyond
``--rtol``) or a field by more than ``--field-mm``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

SAMPLE = Path(__file__).resolve().parents[1] / "src/ddmr/data/sample/brain"

PAIRS = (("pycortex-s1", "itk-kmeans"), ("itk-kmeans", "pycortex-s1"),
         ("colin27", "robex-ref"))

#: name -> ddmr.register keyword arguments ("engine" as EngineSettings changes).
CONFIGURATIONS = {
    "default": {},
    "no-model": {"model": "none"},
    "network-alone": {"engine": False},
    "headers-only": {"model": "none", "affine": "none"},
    "svf": {"model": "none", "engine": {"mode": "svf"}},
    "mi": {"model": "none", "engine": {"similarity": "mi"}},
}


def _without_seconds(value):
    """The summary with every timing and path-like field left out."""
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items()
                if k not in ("runtime_s", "seconds", "path") and not k.endswith("_seconds")}
    if isinstance(value, list):
        return [_without_seconds(v) for v in value]
    return value


def run(out: Path) -> None:
    from dataclasses import replace

    import ddmr
    from ddmr.registration.result import json_safe
    from ddmr.registration.settings import EngineSettings

    out.mkdir(parents=True, exist_ok=True)
    print(f"ddmr from {Path(ddmr.__file__).parent}")
    for name, options in CONFIGURATIONS.items():
        options = dict(options)
        if isinstance(options.get("engine"), dict):
            options["engine"] = replace(EngineSettings(), **options["engine"])
        for fixed, moving in PAIRS:
            result = ddmr.register(SAMPLE / f"images/{fixed}.nii.gz",
                                   SAMPLE / f"images/{moving}.nii.gz",
                                   SAMPLE / f"labels/{fixed}.nii.gz",
                                   SAMPLE / f"labels/{moving}.nii.gz", **options)
            key = f"{name}--{fixed}--{moving}"
            summary = _without_seconds(json_safe(result.summary))
            (out / f"{key}.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
            np.savez(out / f"{key}.npz", displacement=result.displacement_mm,
                     inverse=np.zeros(0) if result.inverse_mm is None else result.inverse_mm,
                     warped=result.warped)
            print(f"{key}: DSC {result.summary['metrics'].get('dsc')}")


def _differences(a, b, rtol: float, where: str = "", ignore: tuple[str, ...] = ()
                 ) -> list[str]:
    if where.lstrip(".") in ignore:
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        found = [f"{where}.{k}: only in one" for k in set(a) ^ set(b)
                 if f"{where}.{k}".lstrip(".") not in ignore]
        for k in sorted(set(a) & set(b)):
            found += _differences(a[k], b[k], rtol, f"{where}.{k}", ignore)
        return found
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in _differences(x, y, rtol, f"{where}[{i}]", ignore)]
    if isinstance(a, float) and isinstance(b, float):
        return [] if math.isclose(a, b, rel_tol=rtol, abs_tol=rtol) else \
            [f"{where}: {a!r} vs {b!r}"]
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def compare(before: Path, after: Path, rtol: float, field_mm: float,
            ignore: tuple[str, ...] = ()) -> int:
    failures = 0
    for path in sorted(before.glob("*.json")):
        other = after / path.name
        if not other.is_file():
            print(f"{path.stem}: missing in {after}")
            failures += 1
            continue
        found = _differences(json.loads(path.read_text()), json.loads(other.read_text()),
                             rtol, ignore=ignore)
        fields_a, fields_b = np.load(path.with_suffix(".npz")), np.load(other.with_suffix(".npz"))
        gaps = {k: float(np.abs(fields_a[k] - fields_b[k]).max()) if fields_a[k].size else 0.0
                for k in ("displacement", "inverse")}
        bad = found or max(gaps.values()) > field_mm
        failures += bool(bad)
        print(f"{'DIFFERS' if bad else 'same   '} {path.stem}: summary "
              f"{'equal' if not found else f'{len(found)} differences'}; fields within "
              f"{gaps['displacement']:.2g} mm, inverse {gaps['inverse']:.2g} mm")
        for line in found[:8]:
            print(f"    {line}")
    print(f"{failures} of {len(list(before.glob('*.json')))} registrations differ")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    runs = commands.add_parser("run")
    runs.add_argument("-o", "--output", required=True, type=Path)
    compares = commands.add_parser("compare")
    compares.add_argument("before", type=Path)
    compares.add_argument("after", type=Path)
    compares.add_argument("--rtol", type=float, default=1e-6,
                          help="relative (and absolute) tolerance of summary numbers")
    compares.add_argument("--field-mm", type=float, default=1e-3,
                          help="largest allowed difference of a field (mm)")
    compares.add_argument("--ignore", action="append", default=[], metavar="KEY",
                          help="a summary key (dotted, e.g. qc.limits) added on purpose")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.output)
        return 0
    return compare(args.before, args.after, args.rtol, args.field_mm, tuple(args.ignore))


if __name__ == "__main__":
    sys.exit(main())
