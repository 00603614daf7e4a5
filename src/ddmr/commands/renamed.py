"""Old option names kept for one release (issue 31, "one vocabulary"): each still works,
is hidden from ``--help`` and prints one line on stderr naming the new option.

This module is no sub-command: the commands add their old spellings with
:func:`add_renamed` (the list is in the README, "Renamed options").
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

#: Every old option name still accepted: (command, old, new).
RENAMED: list[tuple[str, str, str]] = [
    ("register", "--fixed-seg", "--fixed-labels"),
    ("register", "--moving-seg", "--moving-labels"),
    ("register", "--mode", "--update"),
    ("apply", "--labels", "--moving-labels"),
    ("augment", "--seg", "--labels"),
    ("finetune", "--mode", "--strategy"),
    ("pairs", "--mode", "--pairing"),
    ("evaluate", "--pairs", "--stored-pairs"),
    ("report", "--pairs", "--stored-pairs"),
]


def warning(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """Print ``PROG: warning: OLD is deprecated ...: use NEW`` on stderr."""
    from ddmr.deprecated import message

    print(f"{parser.prog}: warning: {message(old, new)}", file=sys.stderr)


class _Renamed(argparse.Action):
    """The old spelling of an option: stores into the new option's ``dest``, with a
    warning."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "",
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        warning(parser, option_string or self.option_strings[0], self.new)
        setattr(namespace, self.dest, values)


def add_renamed(parser: argparse.ArgumentParser, old: str, new: argparse.Action) -> None:
    """Accept ``old`` as a hidden, deprecated spelling of the option ``new`` (the action
    ``parser.add_argument`` returned): the same values, into the same ``dest``."""
    parser.add_argument(old, action=_Renamed, new=new.option_strings[-1], dest=new.dest,
                        nargs=new.nargs, type=new.type, choices=new.choices,
                        metavar=new.metavar, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)


class _RenamedFlag(argparse.Action):
    """An old flag whose meaning moved into another option (``apply --labels``): sets its
    own ``dest`` to True with a warning; the command turns it into the new form."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "",
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        warning(parser, option_string or self.option_strings[0], self.new)
        setattr(namespace, self.dest, True)


def add_renamed_flag(parser: argparse.ArgumentParser, old: str, dest: str, new: str) -> None:
    """Accept the flag ``old`` (hidden) into ``dest`` (default False), warning that ``new``
    replaces it."""
    parser.add_argument(old, action=_RenamedFlag, dest=dest, new=new, default=False,
                        help=argparse.SUPPRESS)
