"""Writing a composite transform (``transform.h5``): size, time and peak memory of
SimpleITK's writer (DDMR's before) against h5py layouts and DDMR's writer
(:mod:`ddmr.io.composite`: float32 rounded to ``STEP_MM``, shuffle + deflate by direct
chunks), side by side.

    python benchmarks/bench_composite_write.py [--field F] [--repeat N] [--keep DIR]

``--field``: a displacement field, (3, I, J, K) RAS mm in a ``.npy`` (on a 1 mm grid), or a
``.nii.gz`` that ``ddmr register`` wrote (``residual_displacement.nii.gz``; already rounded
to FIELD_STEP_MM, which flatters every compressed size); default a smooth random field
on a 182 x 218 x 182 grid (a 1 mm head, 0-6 mm). Every file written is read back by
SimpleITK (``--check``: also ``ants.apply_transforms``). Times are the least of
``--repeat`` runs (a write includes its fsync); memory is the peak resident growth of
one write (Linux: ``/proc/self/clear_refs``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def smooth_field(shape=(182, 218, 182), seed=0) -> np.ndarray:
    """A smooth random displacement (3, I, J, K) float32, RAS mm, up to ~6 mm."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((3, *(s // 8 + 2 for s in shape))).astype(np.float32)
    out = np.empty((3, *shape), dtype=np.float32)
    for axis in range(3):
        zoomed = ndimage.zoom(coarse[axis], [(s + 16) / c for s, c in
                                             zip(shape, coarse.shape[1:], strict=True)],
                              order=3)
        out[axis] = zoomed[:shape[0], :shape[1], :shape[2]] * 2.0
    return out


def load_field(path: Path):
    from ddmr.spatial.grid import Geometry

    if path.suffix == ".npy":
        field = np.load(path).astype(np.float32)
        return field, Geometry(np.eye(4), field.shape[1:])
    import nibabel as nib

    image = nib.load(str(path))
    lps = np.asarray(image.dataobj, dtype=np.float32)[:, :, :, 0, :]  # (I, J, K, 3)
    field = np.stack([-lps[..., 0], -lps[..., 1], lps[..., 2]])
    return field, Geometry(np.asarray(image.affine, dtype=np.float64), field.shape[1:])


def _vectors(field: np.ndarray, dtype) -> np.ndarray:
    """(K, J, I, 3) LPS, as SimpleITK's writer needed it (the copy DDMR made before)."""
    vectors = np.empty((*field.shape[1:][::-1], 3), dtype=dtype)
    for axis, sign in enumerate((-1.0, -1.0, 1.0)):
        vectors[..., axis] = sign * field[axis].T
    return vectors


def atomically(write):
    """``write`` through :func:`ddmr.io.files.atomic_path` (a temporary file, fsync,
    rename), as DDMR writes every file."""
    def atomic_write(path, *arguments) -> None:
        from ddmr.io.files import atomic_path

        with atomic_path(path) as temporary:
            write(temporary, *arguments)
    return atomic_write


def write_simpleitk(path, point_map, field, geometry) -> None:
    """DDMR's writer before: a float64 vector image, then ``sitk.WriteTransform``."""
    import SimpleITK as sitk  # noqa: N813

    from ddmr.io.fields import itk_affine

    image = sitk.GetImageFromArray(_vectors(field, np.float64), isVector=True)
    origin, spacing, direction = geometry.to_itk()
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    transform = sitk.CompositeTransform([itk_affine(point_map),
                                         sitk.DisplacementFieldTransform(image)])
    sitk.WriteTransform(transform, str(path))


def h5py_writer(dtype, level: int | None, rounded: bool):
    """The same layout through h5py's own dataset writes (HDF5's zlib for ``level``)."""
    def write(path, point_map, field, geometry) -> None:
        import h5py

        from ddmr.io import composite

        vectors = _vectors(field, dtype)
        if rounded:
            from ddmr.io.fields import rounded_to_step

            rounded_to_step(vectors, composite.STEP_MM)
        options = {} if level is None else {
            "chunks": (min(vectors.size, composite.CHUNK_VALUES),), "shuffle": True,
            "compression": "gzip", "compression_opts": level}
        with h5py.File(path, "w") as h5:
            _layout(h5, point_map, geometry)
            h5["TransformGroup/2"].create_dataset("TransformParameters",
                                                  data=vectors.reshape(-1), **options)
    return write


def _layout(h5, point_map, geometry) -> None:
    from ddmr.io import composite
    from ddmr.io.fields import itk_affine_parameters

    queue = h5.create_group("TransformGroup")
    composite._string(queue.create_group("0"), "TransformType",
                      "CompositeTransform_double_3_3")
    affine = queue.create_group("1")
    composite._string(affine, "TransformType", "AffineTransform_double_3_3")
    composite._parameters(affine, "TransformFixedParameters", np.zeros(3))
    composite._parameters(affine, "TransformParameters", itk_affine_parameters(point_map))
    field = queue.create_group("2")
    composite._string(field, "TransformType", "DisplacementFieldTransform_double_3_3")
    origin, spacing, direction = geometry.to_itk()
    composite._parameters(field, "TransformFixedParameters",
                          np.array([*geometry.shape, *origin, *spacing, *direction]))


def ddmr_writer(step: float | None = None):
    def write(path, point_map, field, geometry) -> None:
        from ddmr.io import composite

        saved = composite.STEP_MM
        composite.STEP_MM = step or saved
        try:
            composite.write_composite(path, point_map, field, geometry)
        finally:
            composite.STEP_MM = saved
    return write


def _rss_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def measure(write, path, point_map, field, geometry, repeat: int):
    times, peak = [], None
    for _ in range(repeat):
        path.unlink(missing_ok=True)
        try:
            Path("/proc/self/clear_refs").write_text("5")  # the peak RSS starts again
            before = _rss_kib("VmRSS")
        except OSError:
            before = None
        started = time.perf_counter()
        write(path, point_map, field, geometry)
        times.append(time.perf_counter() - started)
        if before is not None:
            grown = (_rss_kib("VmHWM") - before) / 1024
            peak = grown if peak is None else max(peak, grown)
    return min(times), path.stat().st_size, peak


def check(path: Path, field, geometry, ants_too: bool) -> float:
    """Read ``path`` back (SimpleITK; ANTs too) -> the field's largest error in mm."""
    from ddmr.io.composite import displacement_on, read_transform

    error = float(np.abs(displacement_on(read_transform(path), geometry) - field).max())
    if ants_too:
        import ants

        reference = ants.from_numpy(np.zeros(geometry.shape, dtype=np.float32))
        ants.apply_transforms(reference, reference, [str(path)])
    return error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--field", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--check", action="store_true", help="also read each by ANTs")
    parser.add_argument("--keep", type=Path, help="write the files here (default: a "
                        "temporary folder, removed)")
    args = parser.parse_args(argv)
    from ddmr.io import composite
    from ddmr.spatial.grid import Geometry

    field, geometry = (load_field(args.field) if args.field
                       else (smooth_field(), Geometry(np.eye(4), (182, 218, 182))))
    point_map = np.eye(4)  # the affine part costs nothing; read back, the field is all
    step = composite.STEP_MM
    variants = {
        "SimpleITK WriteTransform, float64 (before)": atomically(write_simpleitk),
        "h5py float64, contiguous": atomically(h5py_writer(np.float64, None, False)),
        "h5py float32 unrounded, shuffle+zlib 1": atomically(h5py_writer(np.float32, 1,
                                                                          False)),
        "h5py float32 rounded, shuffle+zlib 1": atomically(h5py_writer(np.float32, 1, True)),
        "h5py float32 rounded, shuffle+zlib 4": atomically(h5py_writer(np.float32, 4, True)),
        f"ddmr: float32 /{1 / step:g} mm, shuffle+isal 1 (after)": ddmr_writer(),
        f"ddmr at FIELD_STEP_MM (/{1 / (4 * step):g} mm)": ddmr_writer(4 * step),
    }
    print(f"field {field.shape[1:]} ({field.nbytes / 1e6:.0f} MB as float32), "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, best of {args.repeat}")
    print(f"{'writer':52s} {'MB':>7s} {'s':>6s} {'+MiB':>6s} {'max err mm':>11s}")
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for number, (name, write) in enumerate(variants.items()):
            path = folder / f"variant{number}.h5"
            seconds, size, peak = measure(write, path, point_map, field, geometry,
                                          args.repeat)
            error = check(path, field, geometry, args.check)
            grown = "?" if peak is None else f"{peak:.0f}"
            print(f"{name:52s} {size / 1e6:7.1f} {seconds:6.2f} {grown:>6s} {error:11.2e}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
