"""DDMR: deep deformable medical image registration.

Conventions (see README): tensors are (B, C, D, H, W) float32, labels uint8; a
displacement ``u`` is in voxels of the grid it lives on, channels in (D, H, W) order,
and pulls back: ``warped(x) = moving(x + u(x))``.
"""

import os as _os
import sys as _sys

from ddmr.errors import DDMRError

# OpenMP threads that wait by sleeping rather than spinning: with spinning waits (the
# default), torch on a core another process also uses ran 10-30 times slower with two
# threads than with one (benchmarks/RESULTS.md, threads). Read by the OpenMP runtime when
# torch loads it, so only before torch is imported, and never over the user's own choice.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
__all__ = ["DDMRError", "__version__", "register"]


def __getattr__(name: str):  # lazy: `import ddmr` must not import torch
    if name == "register":
        from ddmr.registration.pipeline import register

        return register
    raise AttributeError(f"module 'ddmr' has no attribute {name!r}")
