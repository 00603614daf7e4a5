"""Old spellings kept for one release (issue 31, "one vocabulary"), each saying its new name.

In the Python API an old spelling works as before and raises a :class:`RenamedWarning`
(a :class:`DeprecationWarning`, shown once per calling line); ``ddmr`` prints it as one
line on stderr. The command line's old option names are in
:mod:`ddmr.commands.renamed`; the list of what was renamed is in the README ("Renamed
options").
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

#: The word an old call gave for "skip this step" (``model="none"``, ``affine="none"``):
#: the API now takes ``False`` for every step (``model=False``, ``affine=False``,
#: ``engine=False``); the command line keeps the word (``--model none``).
NONE_WORD = "none"

F = TypeVar("F", bound=Callable[..., Any])


class RenamedWarning(DeprecationWarning):
    """An old spelling was used: it still works for this release; the message names the
    new one."""


# shown by default (once per calling line), unlike other DeprecationWarnings, so that a
# script that uses an old spelling learns the new one before it goes
warnings.filterwarnings("default", category=RenamedWarning)


def message(old: str, new: str) -> str:
    """The one line every old spelling gives: ``OLD is deprecated ...: use NEW``."""
    return f"{old} is deprecated and goes in the next release: use {new}"


def warn_renamed(old: str, new: str, stacklevel: int = 2) -> None:
    """Raise a :class:`RenamedWarning` for ``old`` (the caller's caller is blamed at the
    default ``stacklevel``)."""
    warnings.warn(message(old, new), RenamedWarning, stacklevel=stacklevel + 1)


def renamed_keywords(**renames: str) -> Callable[[F], F]:
    """Decorator: keyword arguments ``old=...`` of the function are accepted as its
    ``new`` (``@renamed_keywords(fixed_seg="fixed_labels")``), with a
    :class:`RenamedWarning`; both at once is a ``TypeError``. The signature shown
    (``inspect.signature``, the API page) is the function's own, with the new names."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{function.__name__}() got both {old}= and {new}= "
                                        f"({old} is the old name of {new})")
                    warn_renamed(f"{function.__name__}({old}=...)",
                                 f"{function.__name__}({new}=...)")
                    kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def skip_word(value: Any, name: str, stacklevel: int = 2) -> Any:
    """``False`` for the old ``"none"`` of a step (``model="none"``, ``affine="none"``),
    with a :class:`RenamedWarning`; any other value as it is."""
    if isinstance(value, str) and value == NONE_WORD:
        warn_renamed(f"{name}={NONE_WORD!r}", f"{name}=False", stacklevel + 1)
        return False
    return value
