"""Sub-commands of the ``ddmr`` CLI: each module has ``add_arguments`` and ``run``.

Modules import only the standard library at top level; the work is imported inside
``run`` so that ``ddmr --help`` and each command start fast.
"""
