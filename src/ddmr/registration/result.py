"""What a registration returns, and the files it writes.

Outputs (:meth:`RegistrationResult.save`, built in a temporary folder and renamed;
``docs/outputs.md`` says how to use each in ANTs, ITK-SNAP, 3D Slicer and SimpleITK):

* ``warped.nii.gz``, ``warped_seg.nii.gz`` (with a moving label map), ``jacobian.nii.gz``,
  ``overlay.png`` on the fixed grid;
* ``displacement.nii.gz``: the whole transform as an ITK/ANTs displacement field (LPS mm,
  fixed grid), so ``antsApplyTransforms`` / SimpleITK reproduce ``warped.nii.gz``;
* ``affine.mat`` (the affine part, an ITK transform file) and
  ``residual_displacement.nii.gz`` (the non-rigid part, fixed grid): the same transform
  as ANTs writes it, ``[residual_displacement.nii.gz, affine.mat]``;
* ``inverse_displacement.nii.gz``: the inverse on the moving grid (moving points to
  fixed points), which maps the fixed image onto the moving one;
* ``transform.h5`` and ``inverse_transform.h5``: each direction as one ITK composite
  transform (:mod:`ddmr.io.composite`);
* ``qc.html``: the QC page, self-contained (:mod:`ddmr.registration.qc_page`);
* ``summary.json``, written last.

``save(outputs=...)`` (``--outputs``) writes a chosen few (:mod:`ddmr.registration.outputs`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ddmr.io.files import atomic_directory
from ddmr.registration.outputs import OUTPUTS, check_outputs
from ddmr.registration.qc import Verdict
from ddmr.spatial.grid import Geometry

PathLike = str | os.PathLike[str]


#: The parts of ``summary["runtime_s"]`` that add up to its ``total``.
RUNTIME_PARTS = ("imports", "load", "preprocess", "network", "engine", "native", "inverse",
                 "metrics", "qc", "write")


@dataclass
class RegistrationResult:
    """Outputs of :func:`ddmr.register`, on the fixed image's grid ``geometry``.

    warped: (I, J, K) float32, the moving image warped onto the fixed grid.
    warped_seg: (I, J, K) uint8 or None, the moving labels warped label-exactly.
    displacement_mm: (3, I, J, K) float32, RAS mm: the fixed voxel at world p shows the
        moving image at world ``p + displacement_mm`` (the full transform, affine part
        included). Written in LPS (ITK convention) by :meth:`save`.
    jacobian: (I, J, K) float32, determinant of the transform's Jacobian.
    qc: the quality-control verdict (:mod:`ddmr.registration.qc`).
    summary: what ``summary.json`` holds: inputs, model, affine stages, grids,
        ``runtime_s`` (seconds: ``imports`` torch and the numeric modules on the first
        call; ``load`` read images and model; ``preprocess`` foregrounds and the affine
        stage; ``network`` the model's space, its own affine stage and the forward pass;
        ``engine``; ``native`` the field's trip to the fixed grid, warping and the
        Jacobian; ``inverse``; ``metrics``; ``qc``; ``write``; ``total`` their sum; from
        ``ddmr register`` also ``process_start``, the process's age when the
        registration began (interpreter start, the command's imports), and ``process``,
        its age when the last file but ``summary.json`` was written: the whole process),
        ``engine`` (similarity before and after, steps per level), ``metrics`` (folding
        %, SDlogJ, Jacobian range, largest displacement in mm; DSC, HD95 mm, centroid TRE
        mm with both label maps) and ``qc`` (the verdict and the ``limits`` it used).
    fixed, moving: the images (I, J, K) on their grids (``geometry``, ``moving_geometry``);
    point_map: the affine part (4, 4) RAS, fixed world -> moving world; residual_mm: ``d``
        (3, I, J, K) RAS mm on the fixed grid (``P(p + d(p))``); inverse_mm: the inverse on
        the moving grid; fixed_labels: the fixed label map, for the QC page's contours.
    """

    geometry: Geometry
    warped: np.ndarray
    warped_seg: np.ndarray | None
    displacement_mm: np.ndarray
    jacobian: np.ndarray
    qc: Verdict
    summary: dict[str, Any]
    fixed: np.ndarray = field(repr=False)
    moving: np.ndarray = field(repr=False)
    moving_geometry: Geometry = field(repr=False)
    point_map: np.ndarray | None = field(default=None, repr=False)
    residual_mm: np.ndarray | None = field(default=None, repr=False)
    inverse_mm: np.ndarray | None = field(default=None, repr=False)
    fixed_labels: np.ndarray | None = field(default=None, repr=False)

    def displacement_voxels(self) -> np.ndarray:
        """The displacement (3, I, J, K) in voxels of the fixed grid (ddmr convention)."""
        from ddmr.spatial.field import mm_to_voxels

        return mm_to_voxels(self.displacement_mm, self.geometry)

    def view_centre(self) -> np.ndarray | None:
        """The world point (RAS mm) the pictures cut through for a partial field of view
        (QC measured what the moving image shows): the centre of the fixed voxels the
        moving image shows (QC's ``seen_centre_ras``, on its subsample), where the fixed
        image's centre may lie outside them; None otherwise (each picture's own default)."""
        centre = self.qc.measures.get("seen_centre_ras")
        return None if centre is None else np.asarray(centre, dtype=np.float64)

    def method(self) -> str:
        """What registered: ``model NAME + engine``, ``model NAME``, ``engine``, ``affine``."""
        model = self.summary.get("model")
        parts = [f"model {model['name']}"] if model else []
        if self.summary.get("engine"):
            parts.append("engine")
        return " + ".join(parts) or "affine only"

    def write(self, folder: PathLike, outputs: Iterable[str] | None = None) -> None:
        """Write the ``outputs`` (names of :data:`OUTPUTS`; default all) into the existing
        ``folder``, then ``summary.json``. The files are compressed on parallel threads
        (igzip releases the GIL)."""
        from concurrent.futures import ThreadPoolExecutor

        from ddmr.io.composite import write_composite, write_inverse_composite
        from ddmr.io.fields import save_affine, save_displacement
        from ddmr.io.images import save_image, save_labels
        from ddmr.overlay import save_overlay
        from ddmr.threads import workers

        folder = Path(folder)
        chosen = check_outputs(outputs)
        started = time.perf_counter()
        # the fields go to the files in mm as they are (no voxel copies held meanwhile)
        jobs = {"displacement": (save_displacement, self.displacement_mm, self.geometry,
                                 "mm"),
                "warped": (save_image, self.warped, self.geometry),
                "jacobian": (save_image, self.jacobian, self.geometry)}
        if self.warped_seg is not None:
            jobs["warped_seg"] = (save_labels, self.warped_seg, self.geometry)
        if self.residual_mm is not None:
            jobs["residual_displacement"] = (save_displacement, self.residual_mm,
                                             self.geometry, "mm")
        if self.inverse_mm is not None:
            jobs["inverse_displacement"] = (save_displacement, self.inverse_mm,
                                            self.moving_geometry, "mm")
        if self.point_map is not None:
            jobs["affine"] = (save_affine, self.point_map)
            if self.residual_mm is not None:
                jobs["transform"] = (write_composite, self.point_map, self.residual_mm,
                                     self.geometry)
            if self.inverse_mm is not None:
                jobs["inverse_transform"] = (write_inverse_composite, self.point_map,
                                             self.inverse_mm, self.moving_geometry)
        jobs = {name: job for name, job in jobs.items() if name in chosen}
        with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), workers()))) as pool:
            pending = [pool.submit(job, folder / OUTPUTS[name], *arguments)
                       for name, (job, *arguments) in jobs.items()]
            if "overlay" in chosen:
                save_overlay(folder / OUTPUTS["overlay"], self.fixed, self.geometry,
                             self.moving, self.moving_geometry, self.warped, self.jacobian,
                             title=f"ddmr register, {self.method()}; {self.qc.line()}",
                             point_map=self.point_map, centre=self.view_centre())
            if "qc_page" in chosen:
                from ddmr.registration.qc_page import write_qc_page

                write_qc_page(folder / OUTPUTS["qc_page"], self,
                              fixed_labels=self.fixed_labels)
            for job in pending:
                job.result()
        self.summary["outputs"] = sorted(path.name for path in folder.iterdir())
        runtime = self.summary["runtime_s"]
        runtime["write"] = round(time.perf_counter() - started, 3)
        runtime["total"] = round(sum(runtime.get(k, 0.0) for k in RUNTIME_PARTS), 3)
        if "process_start" in runtime:  # a command's own process: its whole time so far
            from ddmr.clock import process_seconds

            runtime["process"] = _rounded(process_seconds())
        (folder / "summary.json").write_text(json.dumps(json_safe(self.summary), indent=2)
                                             + "\n")

    def save(self, outdir: PathLike, overwrite: bool = False,
             outputs: Iterable[str] | None = None) -> Path:
        """Write the ``outputs`` (default all; see :meth:`write`) into ``outdir`` (built in
        a temporary folder, then renamed); an existing ``outdir`` is refused unless
        ``overwrite``."""
        chosen = check_outputs(outputs)  # before anything is written
        with atomic_directory(outdir, overwrite) as folder:
            self.write(folder, chosen)
        return Path(outdir)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def json_safe(value: Any) -> Any:
    """NaN/Inf -> None, numpy scalars and arrays -> Python, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
