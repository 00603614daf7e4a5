"""A pairs folder's files and format: what :mod:`ddmr.evaluate.pairs` (same-subject pairs,
and the reader of every pairs folder) and :mod:`ddmr.evaluate.inter` (inter-subject pairs)
both write, here so that neither imports the other for it (the folder's layout is in
:mod:`ddmr.evaluate.pairs`' docstring)."""

from __future__ import annotations

#: ``format`` of a pairs index
FORMAT = "ddmr-pairs"
#: ``format_version`` of a pairs index
FORMAT_VERSION = 1
#: the index, in the pairs folder
INDEX = "pairs.json"
#: the arrays, in the pairs folder
ARRAYS = "pairs.h5"
