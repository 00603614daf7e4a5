"""The ``ddmr`` command line: one argparse app whose sub-commands live in
:mod:`ddmr.commands`, one thin module each (``add_arguments(parser)`` and
``run(args) -> int``). Heavy libraries are imported only by the command that runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ddmr.deprecated import RenamedWarning
from ddmr.errors import DDMRError, Interrupted

# name -> (module under ddmr.commands, one-line help). Add a line here for a new command.
COMMANDS: dict[str, tuple[str, str]] = {
    "designs": ("designs", "list the six loss designs of the paper as a table"),
    "prepare": ("prepare", "resample, crop, resize and normalise a dataset into HDF5"),
    "train": ("train", "train a design on prepared data"),
    "finetune": ("finetune", "fine-tune a trained model on new data (full or two-step)"),
    "export": ("export", "write a model file from a training run's best or last checkpoint"),
    "register": ("register", "register a moving image to a fixed image in world space"),
    "apply": ("apply", "apply a saved registration to an image, a label map or points"),
    "models": ("models", "list the shipped models and their cards"),
    "pairs": ("pairs", "make and store test pairs from held-out subjects"),
    "evaluate": ("evaluate", "score models and ANTs baselines on stored test pairs"),
    "stats": ("stats", "Tukey HSD and Mann-Whitney U tests on ddmr evaluate's results"),
    "report": ("report", "HTML + Markdown report of evaluation results and training runs"),
    "demo": ("demo", "the whole pipeline on the bundled data, ending in a report"),
    "augment": ("augment", "make one synthetic pair with its ground-truth field from an image"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddmr", description="Deep deformable medical image registration."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"ddmr.commands.{module_name}")
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_module=module)
    return parser


# options whose value may start with a minus sign (argparse would take it for an option)
SIGNED_LIST_OPTIONS = ("--ct-window",)


def _join_signed_values(argv: Sequence[str]) -> list[str]:
    """``--ct-window -100,400`` -> ``--ct-window=-100,400``."""
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        value = items[i + 1] if i + 1 < len(items) else ""
        if items[i] in SIGNED_LIST_OPTIONS and value.startswith("-") and value[1:2].isdigit():
            out.append(f"{items[i]}={items[i + 1]}")
            i += 2
            continue
        out.append(items[i])
        i += 1
    return out


def one_line(error: BaseException) -> str:
    """The error's message on one line: a message that quotes a multi-line text (a YAML
    parser's, say) keeps its words, with the line breaks collapsed."""
    return " ".join(part.strip() for part in str(error).splitlines() if part.strip())


#: what torch's allocators say when an allocation fails (CPU, CUDA, MPS)
OUT_OF_MEMORY_MESSAGES = ("out of memory", "not enough memory", "DefaultCPUAllocator",
                          "can't allocate memory", "Cannot allocate memory")


def is_out_of_memory(error: BaseException) -> bool:
    """True for a ``MemoryError``, ``torch.OutOfMemoryError`` or a ``RuntimeError`` whose
    message is an allocator's out-of-memory report."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    return isinstance(error, RuntimeError) and any(
        text.lower() in str(error).lower() for text in OUT_OF_MEMORY_MESSAGES)


@contextmanager
def renamed_warnings_as_lines(command: str) -> Iterator[None]:
    """Inside, an old spelling the library meets (a pairs CSV's old column names, say:
    :class:`ddmr.deprecated.RenamedWarning`) prints ``ddmr COMMAND: warning: ...`` on one
    line of stderr, every time; other warnings are shown as Python shows them."""
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None) -> None:
            if issubclass(category, RenamedWarning):
                print(f"ddmr {command}: warning: {message}", file=sys.stderr)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        warnings.simplefilter("always", RenamedWarning)
        yield


def console() -> None:
    """The ``ddmr`` console script: :func:`main`, then the exit. When nothing else runs
    (no other thread), the streams are flushed and the process ends at once: the
    interpreter's own teardown of torch and numba took ~0.6 s after every file had been
    written and closed (benchmarks/RESULTS.md, issue 28)."""
    import os
    import threading

    code = main()
    if threading.active_count() > 1:
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ddmr`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(_join_signed_values(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        with renamed_warnings_as_lines(args.command):
            return int(args._module.run(args) or 0)
    except DDMRError as error:
        if args.debug:
            raise
        print(f"ddmr {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except Interrupted as interrupted:
        print(f"ddmr {args.command}: {one_line(interrupted)}", file=sys.stderr)
        return interrupted.exit_status
    except (MemoryError, RuntimeError) as error:
        if args.debug or not is_out_of_memory(error):
            raise
        detail = f" ({one_line(error)[:200]})" if str(error).strip() else ""
        print(f"ddmr {args.command}: error: out of memory{detail}; use smaller images (crop "
              "or downsample them) or smaller options (--size, --tps-grid, ...), or run on a "
              "machine with more memory (--debug shows where)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddmr {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
