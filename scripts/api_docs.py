"""Write ``docs/python-api.md`` from the docstrings of DDMR's public Python functions.

    python scripts/api_docs.py          # rewrite docs/python-api.md
    python scripts/api_docs.py --check  # exit 1 when the file is not what they say now
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

TARGET = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"

#: (section, module, names) in the order the page shows them.
API = [
    ("Registering", "ddmr.registration.pipeline", ["register"]),
    ("Registering", "ddmr.registration.settings", ["EngineSettings"]),
    ("Registering", "ddmr.registration.qc", ["QCLimits", "Verdict"]),
    ("Registering", "ddmr.registration.result", ["RegistrationResult"]),
    ("Batches", "ddmr.registration.batch", ["read_pairs", "register_pairs", "merge"]),
    ("Applying a saved registration", "ddmr.registration.apply",
     ["SavedTransform", "apply_to_image", "apply_to_points", "read_points", "write_points"]),
    ("Files", "ddmr.io.images", ["load_image", "load_labels", "save_image", "save_labels"]),
    ("Files", "ddmr.io.fields", ["load_displacement", "save_displacement", "load_affine",
                                 "save_affine"]),
    ("Grids and fields", "ddmr.spatial.grid", ["Geometry"]),
    ("Grids and fields", "ddmr.spatial.field",
     ["jacobian_determinant", "jacobian_determinant_mm", "mm_to_voxels", "voxels_to_mm",
      "folding_percent", "sdlogj"]),
    ("Grids and fields", "ddmr.spatial.warp", ["warp_image", "warp_labels"]),
    ("Models", "ddmr.model.shipped", ["shipped_models", "resolve_model", "load"]),
    ("Models", "ddmr.model.file", ["load_model", "save_model"]),
    ("Evaluation", "ddmr.evaluate.pairs", ["make_pairs"]),
    ("Evaluation", "ddmr.evaluate.runner", ["evaluate"]),
    ("Data", "ddmr.data.cohort", ["sample_cohort"]),
    ("Threads", "ddmr.threads", ["use_threads"]),
]


def render() -> str:
    lines = ["# Python API", "",
             "Generated from the docstrings by `python scripts/api_docs.py` (a test checks that "
             "this page is current). Shapes are (I, J, K) for arrays on a grid, (B, C, D, H, W) "
             "for tensors; world coordinates are RAS mm; displacements follow "
             "`ddmr.spatial.field`'s convention.", ""]
    section = None
    for title, module_name, names in API:
        if title != section:
            lines += [f"## {title}", ""]
            section = title
        module = importlib.import_module(module_name)
        for name in names:
            item = getattr(module, name)
            qualified = "ddmr.register" if name == "register" else f"{module_name}.{name}"
            try:
                signature = str(inspect.signature(item))
            except (TypeError, ValueError):
                signature = "(...)"
            kind = "class " if inspect.isclass(item) else ""
            lines += [f"### `{kind}{qualified}`", "", "```python",
                      f"{kind}{qualified}{signature}", "```", "", "```text",
                      inspect.cleandoc(item.__doc__ or "(no docstring)"), "```", ""]
            if inspect.isclass(item):
                for method_name, method in inspect.getmembers(item, inspect.isfunction):
                    if method_name.startswith("_") or method.__qualname__.split(".")[0] != name:
                        continue
                    lines += [f"- `{method_name}{inspect.signature(method)}`: "
                              + inspect.cleandoc(method.__doc__ or "").split("\n\n")[0]
                              .replace("\n", " "), ""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run python scripts/api_docs.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
