"""Pairs that QC must fail (issue 33), and two unusual pairs it must pass, as files.

Made from the bundled brain (``pycortex-s1``) and abdominal CT: a brain-sized crop of the
CT (132 x 150 x 132 mm: lumbar spine and bowel), uniform noise (64^3 at 2.5 mm, values
0-1000), its left and right halves and its top and bottom halves (no shared voxels); and
two unusual pairs it must pass: the brain with its lower half zeroed (a partial view of the
same brain registered to the whole one: the answer is the identity, which DDMR finds since
issue 32, where it used to stretch the half over the whole), and the brain flipped left
to right on the same header (a mirror image). Used by ``tests/test_qc.py`` and
``benchmarks/bench_qc.py``.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

#: (name, fixed, moving, valid): the pairs, by the keys of :func:`wrong_pair_files`.
PAIRS = (("ct-crop->brain", "brain", "ct-crop", False),
         ("brain->ct-crop", "ct-crop", "brain", False),
         ("ct->brain", "brain", "ct", False),
         ("brain->ct", "ct", "brain", False),
         ("noise->brain", "brain", "noise", False),
         ("lower-zeroed->brain", "brain", "lower-zeroed", True),
         ("right->left", "left", "right", False),
         ("bottom->top", "top", "bottom", False),
         ("flipped->brain", "brain", "flipped", True))


def wrong_pair_files(folder: Path) -> dict[str, Path]:
    """The images of :data:`PAIRS` by key, written once into ``folder``."""
    from ddmr.data.cohort import sample_cohort_dir, sample_ct_dir

    brain_path = sample_cohort_dir() / "images" / "pycortex-s1.nii.gz"
    ct_path = sample_ct_dir() / "images" / "totalseg-abdomen-pelvis.nii.gz"
    files = {"brain": brain_path, "ct": ct_path}
    names = ("ct-crop", "noise", "lower-zeroed", "top", "bottom", "left", "right", "flipped")
    files.update({name: folder / f"{name}.nii.gz" for name in names})
    if all(files[name].is_file() for name in names):
        return files
    brain = nib.load(brain_path)
    values = np.asarray(brain.dataobj, dtype=np.float32)
    ct = nib.load(ct_path)
    ct_values = np.asarray(ct.dataobj, dtype=np.float32)
    size = np.array([44, 50, 44])  # at 3 mm
    low = np.array(ct_values.shape) // 2 - size // 2
    crop_affine = ct.affine.copy()
    crop_affine[:3, 3] = ct.affine[:3, :3] @ low + ct.affine[:3, 3]
    images = {"ct-crop": (ct_values[tuple(slice(a, a + n) for a, n in zip(low, size,
                                                                             strict=True))],
                          crop_affine),
              "noise": (np.random.default_rng(0).uniform(0, 1000, (64,) * 3),
                        np.diag([2.5, 2.5, 2.5, 1.0]))}
    half_i, half_k = values.shape[0] // 2, values.shape[2] // 2
    for name, keep in (("lower-zeroed", np.s_[:, :, half_k:]), ("top", np.s_[:, :, half_k:]),
                       ("bottom", np.s_[:, :, :half_k]), ("left", np.s_[:half_i]),
                       ("right", np.s_[half_i:])):
        part = np.zeros_like(values)
        part[keep] = values[keep]
        images[name] = (part, brain.affine)
    images["flipped"] = (values[::-1].copy(), brain.affine)
    folder.mkdir(parents=True, exist_ok=True)
    for name, (array, affine) in images.items():
        nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), affine), files[name])
    return files
