"""Output folders of ``ddmr register``: refused when they exist (unless replacing them is
asked for), built under a temporary name and renamed when complete."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ddmr.errors import InputError
from ddmr.io import atomic_directory

PathLike = str | os.PathLike[str]


def check_output(outdir: PathLike, overwrite: bool) -> Path:
    """Raise :class:`InputError` if ``outdir`` exists (and may not be replaced) or is a
    file."""
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"{outdir}: exists and is not a folder")
    if outdir.exists() and not overwrite:
        raise InputError(f"{outdir}: output folder already exists (pass --overwrite to replace)")
    return outdir


@contextmanager
def output_folder(outdir: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``outdir``; on success it replaces ``outdir``, on
    failure it is removed and ``outdir`` is left as it was."""
    outdir = check_output(outdir, overwrite)
    with atomic_directory(outdir) as temporary:
        yield temporary
