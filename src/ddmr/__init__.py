"""DDMR: deep deformable medical image registration.

Conventions (see README): tensors are (B, C, D, H, W) float32, labels uint8; a
displacement ``u`` is in voxels of the grid it lives on, channels in (D, H, W) order,
and pulls back: ``warped(x) = moving(x + u(x))``.
"""

from ddmr.errors import DDMRError

__version__ = "0.1.0"
__all__ = ["DDMRError", "__version__", "register"]


def __getattr__(name: str):  # lazy: `import ddmr` must not import torch
    if name == "register":
        from ddmr.registration.pipeline import register

        return register
    raise AttributeError(f"module 'ddmr' has no attribute {name!r}")
