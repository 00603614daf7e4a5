"""Synthetic contrast-enhanced abdominal CT phantoms (in Hounsfield units).

SYNTHETIC DATA. No real abdominal CT with a liver mask ships with ddmr; these volumes
stand in for one in tests and demos. They are drawn from simple geometric models, not
from patients, and say nothing about real anatomy or real image statistics beyond the
rough Hounsfield ranges of a portal-venous-phase scan:

=================  =========================================
air (outside)      -1000 HU
lung bases         about -850 HU
subcutaneous fat   about -100 HU (visceral fat about -90)
muscle             about 50 HU
liver              100..130 HU (label 1)
hepatic vessels    180..250 HU (label 2: portal + hepatic venous trees in the liver)
aorta / IVC        about 200 / 150 HU
kidneys            about 150..190 HU cortex, darker hilum
spleen             about 110 HU
vertebrae          cancellous about 400 HU, cortical shell and ribs 700..1000 HU
bowel gas          about -950 HU
=================  =========================================

Anatomy is laid out in millimetres at adult size (body about 300-350 mm wide, liver
about 1.2-2 litres), so the field of view is ``shape * spacing`` and what lies outside it
is cut off, as in a scan. Array axes are (x, y, z) of a RAS voxel grid: index 0 grows
towards the patient's right, 1 anterior, 2 superior; the affine maps voxel to world mm.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

LABEL_NAMES: dict[int, str] = {0: "background", 1: "liver parenchyma", 2: "liver vessels"}

#: Tissue classes of :attr:`Phantom.tissue` (name -> value); 0 is air outside the body.
TISSUES: dict[str, int] = {
    name: i for i, name in enumerate((
        "air", "fat", "muscle", "visceral fat", "bone", "disc", "spinal canal", "aorta",
        "vena cava", "lung", "spleen", "kidney", "renal pelvis", "bowel", "bowel gas",
        "liver", "liver vessels",
    ))
}

#: Default voxel grid: 96^3 voxels of 4 x 4 x 3 mm (384 x 384 x 288 mm, a whole abdomen).
DEFAULT_SHAPE: tuple[int, int, int] = (96, 96, 96)
DEFAULT_SPACING: tuple[float, float, float] = (4.0, 4.0, 3.0)


@dataclass(frozen=True)
class Phantom:
    """One synthetic CT volume.

    Attributes:
        image_hu: float32 (X, Y, Z) in Hounsfield units.
        labels: uint8 (X, Y, Z): 0 background, 1 liver parenchyma, 2 liver vessels.
        affine: 4x4 voxel -> world (mm, RAS).
        spacing: voxel size in mm along (X, Y, Z).
        tissue: uint8 (X, Y, Z) tissue class of every voxel before blur and noise
            (values in :data:`TISSUES`), for tests and figures.
    """

    image_hu: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    tissue: np.ndarray | None = None


def phantom_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """RAS affine of a grid centred on world (0, 0, 0); 4x4, mm."""
    aff = np.diag([*map(float, spacing), 1.0])
    aff[:3, 3] = -(np.asarray(shape, float) - 1) / 2 * np.asarray(spacing, float)
    return aff


def _world_axes(shape: Sequence[int], spacing: Sequence[float]) -> list[np.ndarray]:
    """1D world coordinates (mm) of the voxel centres along each axis."""
    return [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)]


def _lobed_ellipsoid(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, centre: np.ndarray, radii: np.ndarray,
    rng: np.random.Generator, n_lobes: int, amp: float,
) -> np.ndarray:
    """Signed level set (<0 inside, 1 far outside) of an ellipsoid with random smooth bumps.

    ``x, y, z`` are the sparse world axes (mm) of the grid. Bumps are Gaussian in the angle
    between the voxel direction and random unit vectors. Only the bounding box of the
    shape is evaluated.
    """
    dirs = rng.normal(size=(n_lobes, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    amps = rng.uniform(-amp, amp, n_lobes)
    widths = rng.uniform(0.5, 0.9, n_lobes)
    shape = (x.shape[0], y.shape[1], z.shape[2])
    out = np.ones(shape, np.float32)
    reach = radii * (1 + amp * n_lobes) + 1
    sl = []
    for ax, c, r in zip((x.ravel(), y.ravel(), z.ravel()), centre, reach, strict=True):
        idx = np.nonzero(np.abs(ax - c) <= r)[0]
        if idx.size == 0:
            return out
        sl.append(slice(idx[0], idx[-1] + 1))
    qx = ((x.ravel()[sl[0]] - centre[0]) / radii[0]).astype(np.float32)[:, None, None]
    qy = ((y.ravel()[sl[1]] - centre[1]) / radii[1]).astype(np.float32)[None, :, None]
    qz = ((z.ravel()[sl[2]] - centre[2]) / radii[2]).astype(np.float32)[None, None, :]
    rho = np.sqrt(qx * qx + qy * qy + qz * qz) + np.float32(1e-6)
    bump = np.zeros_like(rho)
    for d, a, w in zip(dirs.astype(np.float32), amps, widths, strict=True):
        cos = (qx * d[0] + qy * d[1] + qz * d[2]) / rho
        bump += np.float32(a) * np.exp((cos - 1) / np.float32(w * w))
    out[sl[0], sl[1], sl[2]] = np.minimum(rho - (1 + bump), 1)
    return out


@dataclass
class _Segment:
    p0: np.ndarray  # mm
    p1: np.ndarray
    r0: float
    r1: float


def _grow_tree(
    root: np.ndarray, direction: np.ndarray, radius: float, inside, rng: np.random.Generator,
    max_depth: int = 8, min_radius: float = 1.2, max_segments: int = 120,
) -> list[_Segment]:
    """Random tree of tapering tubes (mm) that stays where ``inside(point)`` is True.

    Each segment is 5-8 radii long and tapers by 3-10 %; it splits into two children whose
    radii follow Murray's law (r^3 = r1^3 + r2^3) at 20-45 degrees from the parent.
    """
    segs: list[_Segment] = []
    stack = [(root, direction / np.linalg.norm(direction), radius, 0)]
    while stack and len(segs) < max_segments:
        p, d, r, depth = stack.pop(0)  # breadth first: big branches before twigs
        if depth > max_depth or r < min_radius:
            continue
        for _ in range(10):  # a few tries to stay inside
            length = rng.uniform(5.0, 8.0) * r + 4.0
            dd = d + rng.normal(scale=0.2, size=3)
            dd /= np.linalg.norm(dd)
            q = p + length * dd
            if inside(q) and inside((p + q) / 2):
                break
        else:
            continue
        r_end = r * rng.uniform(0.9, 0.97)
        segs.append(_Segment(p, q, r, r_end))
        perp = np.cross(dd, rng.normal(size=3))
        perp /= np.linalg.norm(perp) + 1e-9
        share = rng.uniform(0.5, 0.8)
        for sgn, frac in ((1.0, share), (-1.0, 1 - share)):
            angle = np.deg2rad(rng.uniform(20, 45))
            child = np.cos(angle) * dd + sgn * np.sin(angle) * perp
            stack.append((q, child, r_end * frac ** (1 / 3), depth + 1))
    return segs


def _rasterise_tubes(
    segs: list[_Segment], axes: list[np.ndarray], spacing: Sequence[float]
) -> np.ndarray:
    """Boolean grid of voxels within the (linearly tapering) radius of any segment."""
    shape = tuple(len(a) for a in axes)
    out = np.zeros(shape, bool)
    origin = np.array([a[0] for a in axes])
    sp = np.asarray(spacing, float)
    for s in segs:
        rmax = max(s.r0, s.r1)
        lo = np.floor((np.minimum(s.p0, s.p1) - rmax - origin) / sp).astype(int)
        hi = np.ceil((np.maximum(s.p0, s.p1) + rmax - origin) / sp).astype(int) + 1
        lo, hi = np.clip(lo, 0, shape), np.clip(hi, 0, shape)
        if np.any(hi <= lo):
            continue
        gx, gy, gz = np.meshgrid(*(ax[i0:i1] for ax, i0, i1 in zip(axes, lo, hi, strict=True)),
                                 indexing="ij")
        v = s.p1 - s.p0
        t = ((gx - s.p0[0]) * v[0] + (gy - s.p0[1]) * v[1] + (gz - s.p0[2]) * v[2]) / (v @ v)
        t = np.clip(t, 0, 1)
        dist2 = ((gx - s.p0[0] - t * v[0]) ** 2 + (gy - s.p0[1] - t * v[1]) ** 2
                 + (gz - s.p0[2] - t * v[2]) ** 2)
        rad = s.r0 + t * (s.r1 - s.r0)
        # at least half a voxel wide so thin branches do not vanish between samples
        rad = np.maximum(rad, 0.5 * sp.min())
        out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] |= dist2 <= rad * rad
    return out


def make_ct_phantom(
    seed: int | np.random.Generator = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
) -> Phantom:
    """Draw one synthetic contrast-enhanced abdominal CT (see the module docstring).

    Args:
        seed: an int seed or a numpy Generator; the same seed gives the same volume.
        shape: voxels along (x, y, z).
        spacing: mm along (x, y, z).

    Returns:
        a :class:`Phantom` (image in HU float32, labels uint8, RAS affine, spacing).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or len(spacing) != 3 or min(shape) < 8 or min(spacing) <= 0:
        raise ValueError(f"need a 3D shape >= 8 and positive spacing, got {shape}, {spacing}")
    axes = _world_axes(shape, spacing)
    px, py, pz = np.meshgrid(*axes, indexing="ij", sparse=True)
    zlo, zhi = axes[2][0], axes[2][-1]

    # --- body: elliptic cross-section with a smooth, slightly wavy outline ----------------
    a = rng.uniform(145, 175)  # half width (x), mm
    b = rng.uniform(100, 125)  # half depth (y), mm
    theta = np.arctan2(py / b, px / a)
    wav = sum(rng.normal(scale=0.015) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
              for k in range(2, 6))
    taper = 1 + 0.04 * np.sin((pz - zlo) / max(zhi - zlo, 1) * np.pi + rng.uniform(-1, 1))
    rho = np.sqrt((px / a) ** 2 + (py / b) ** 2) / (taper * (1 + wav))
    body = rho < 1
    fat_mm = rng.uniform(12, 30)
    muscle_mm = rng.uniform(8, 14)
    scale = min(a, b)
    wall_out = rho < 1 - fat_mm / scale
    cavity = rho < 1 - (fat_mm + muscle_mm) / scale

    hu = np.full(shape, -1000.0, np.float32)
    tissue = np.zeros(shape, np.uint8)

    def paint(mask: np.ndarray, value: float, name: str) -> None:
        m = np.broadcast_to(mask, shape)
        hu[m] = value
        tissue[m] = TISSUES[name]

    paint(body, -100 + rng.normal(0, 4), 'fat')
    paint(wall_out & ~cavity, 50 + rng.normal(0, 5), 'muscle')
    paint(cavity, -90 + rng.normal(0, 5), 'visceral fat')
    body = np.broadcast_to(body, shape)
    cavity = np.broadcast_to(cavity, shape)

    # --- spine (vertebral bodies, discs, canal, spinous process) -------------------------
    spine_y = -b + fat_mm + muscle_mm + rng.uniform(40, 50)
    spine_x = rng.normal(0, 4)
    vr = rng.uniform(17, 22)
    period = rng.uniform(30, 36)
    phase = rng.uniform(0, period)
    disc = np.abs(((pz - phase) % period) - period / 2) < 4
    rr = np.sqrt((px - spine_x) ** 2 + (py - spine_y) ** 2)
    vbody = rr < vr
    canal_y = spine_y - vr - 9
    canal = np.sqrt((px - spine_x) ** 2 + (py - canal_y) ** 2) < 8
    arch = (np.sqrt((px - spine_x) ** 2 + (py - canal_y) ** 2) < 15) & ~canal
    spinous = (np.abs(px - spine_x) < 4) & (py < canal_y - 8) & (py > canal_y - 45)
    # paraspinal muscles around the posterior elements
    paraspinal = ((np.abs(np.abs(px - spine_x) - 35) < 25) & (py < spine_y + 5)
                  & (py > canal_y - 50)) & np.broadcast_to(wall_out, shape)
    paint(paraspinal, 50 + rng.normal(0, 5), 'muscle')
    bone = np.broadcast_to((vbody | arch | spinous), shape) & ~np.broadcast_to(disc & vbody, shape)
    cortical_hu, cancellous_hu = rng.uniform(750, 950), rng.uniform(380, 450)
    paint(vbody & disc, 80, 'disc')
    paint(bone, cancellous_hu, 'bone')
    shell = bone & ~ndimage.binary_erosion(bone, iterations=1)
    paint(shell, cortical_hu, 'bone')
    paint(canal, 10, 'spinal canal')

    # --- aorta and IVC -------------------------------------------------------------------
    aorta_c = (spine_x - rng.uniform(12, 20), spine_y + vr + 12)
    ivc_c = (spine_x + rng.uniform(22, 30), spine_y + vr + 14)
    r_aorta, r_ivc = rng.uniform(10, 13), rng.uniform(11, 14)
    aorta = np.broadcast_to(np.hypot(px - aorta_c[0], py - aorta_c[1]) < r_aorta, shape)
    ivc = np.broadcast_to(np.hypot(px - ivc_c[0], (py - ivc_c[1]) * 1.3) < r_ivc, shape)
    paint(aorta, rng.uniform(180, 230), 'aorta')
    paint(ivc, rng.uniform(130, 170), 'vena cava')

    # --- liver (right upper quadrant, lobed, with a left lobe across the midline) --------
    z_dome = zhi - rng.uniform(35, 55)  # liver dome below the top: lung bases above it
    lrad = np.array([rng.uniform(66, 80), rng.uniform(62, 76), rng.uniform(66, 80)])
    lc = np.array([a * rng.uniform(0.32, 0.42), rng.uniform(-5, 15), z_dome - lrad[2] * 0.95])
    right_lobe = _lobed_ellipsoid(px, py, pz, lc, lrad, rng, n_lobes=7, amp=0.18)
    left_c = np.array([lc[0] - rng.uniform(80, 100), lc[1] + rng.uniform(15, 30),
                       lc[2] + rng.uniform(15, 30)])
    left_r = np.array([rng.uniform(50, 65), rng.uniform(28, 40), rng.uniform(30, 40)])
    left_lobe = _lobed_ellipsoid(px, py, pz, left_c, left_r, rng, n_lobes=4, amp=0.15)
    k = 0.15  # smooth union of the two level sets
    h = np.clip(0.5 + 0.5 * (left_lobe - right_lobe) / k, 0, 1)
    liver_ls = left_lobe * (1 - h) + right_lobe * h - k * h * (1 - h)
    liver = (liver_ls < 0) & cavity
    liver &= ~np.broadcast_to(np.hypot(px - spine_x, py - spine_y) < vr + 12, shape)
    liver &= ~ivc & ~aorta
    liver = _largest(liver)

    # --- lungs above the diaphragm (domes over the liver and spleen) --------------------
    dome = z_dome + 8 + 0.004 * (px - lc[0]) ** 2 + 0.003 * (py - lc[1]) ** 2
    lungs = cavity & (pz > dome) & ~np.broadcast_to(np.abs(px - spine_x) < 35, shape)
    lungs &= np.broadcast_to(py > spine_y - 10, shape) | np.broadcast_to(np.abs(px) > 60, shape)
    paint(lungs, -850 + rng.normal(0, 10), 'lung')

    # --- spleen, kidneys, stomach/bowel gas ---------------------------------------------
    sc = np.array([-a * rng.uniform(0.45, 0.6), spine_y + rng.uniform(10, 30), z_dome - 60])
    spleen = (_lobed_ellipsoid(px, py, pz, sc, np.array([30, 45, 55]), rng, 4, 0.1) < 0) & cavity
    spleen &= ~liver & ~lungs
    paint(spleen, rng.uniform(100, 120), 'spleen')
    kid_z = [lc[2] - rng.uniform(50, 70), lc[2] - rng.uniform(25, 45)]  # right lower
    kidneys = np.zeros(shape, bool)
    for side, kz in zip((1, -1), kid_z, strict=True):
        kc = np.array([spine_x + side * rng.uniform(60, 75), spine_y + rng.uniform(-5, 10), kz])
        kls = _lobed_ellipsoid(px, py, pz, kc, np.array([28, 25, 55]), rng, 3, 0.08)
        kid = (kls < 0) & cavity & ~liver & ~spleen
        hilum = kid & np.broadcast_to(np.hypot(px - (kc[0] - side * 14), py - kc[1]) < 9, shape)
        paint(kid, rng.uniform(150, 190), 'kidney')
        hu[kid & (kls > -0.35)] += 15  # brighter cortex
        paint(hilum, 25, 'renal pelvis')
        kidneys |= kid
    organs = liver | spleen | kidneys | lungs | aorta | ivc
    soft = cavity & ~organs & np.broadcast_to(py > spine_y - 5, shape) & (pz < z_dome)
    loops = _smooth_noise(shape, rng, 2.5)
    bowel = soft & (loops > 0.2)
    paint(bowel, rng.uniform(30, 60), 'bowel')
    gas = soft & (loops > 1.9) & np.broadcast_to(py > 0, shape)
    paint(gas, -950, 'bowel gas')

    # --- ribs in the upper part of the wall ----------------------------------------------
    rib_band = np.broadcast_to((np.abs(rho - (1 - (fat_mm + muscle_mm * 0.5) / scale)) < 0.025),
                               shape)
    rib_z = np.abs(((pz - rng.uniform(0, 25)) % 25) - 12.5) < 5
    ribs = rib_band & rib_z & (pz > lc[2] - 40)
    ribs &= np.broadcast_to((py < b * 0.35) & (np.abs(px) > 45), shape)
    paint(ribs, rng.uniform(700, 900), 'bone')

    # --- liver parenchyma and vessel trees -----------------------------------------------
    paint(liver, rng.uniform(100, 130), 'liver')
    hu[liver] += 6 * _smooth_noise(shape, rng, 2.0)[liver]
    env = ndimage.binary_erosion(liver, iterations=1)

    def inside(p: np.ndarray) -> bool:
        idx = np.rint((p - np.array([ax[0] for ax in axes])) / np.array(spacing)).astype(int)
        return bool(np.all(idx >= 0) and np.all(idx < shape) and env[tuple(idx)])

    vessel_hu = rng.uniform(200, 250)
    origin = np.array([ax[0] for ax in axes])
    pts = np.argwhere(env) * np.array(spacing) + origin
    centroid = pts.mean(0)

    def aim(start: np.ndarray) -> np.ndarray:
        """Direction from ``start`` to a random point deep in the liver."""
        target = pts[rng.integers(len(pts))]
        target = 0.5 * target + 0.5 * centroid
        return target - start

    trees: list[_Segment] = []
    # portal tree: enters at the hilum (medial, inferior-posterior part of the liver)
    hilum = _nearest_inside(centroid + np.array([-40.0, -15.0, -30.0]), env, axes, spacing)
    for r in (rng.uniform(6, 7.5), rng.uniform(5, 6.5), rng.uniform(4, 5.5)):
        trees += _grow_tree(hilum, aim(hilum), r, inside, rng)
    # hepatic veins: from the dome near the IVC, spreading into the liver
    outlet = _nearest_inside(np.array([ivc_c[0], ivc_c[1], z_dome - 15]), env, axes, spacing)
    for r in (rng.uniform(5, 6.5), rng.uniform(4, 5.5), rng.uniform(4, 5.5)):
        trees += _grow_tree(outlet, aim(outlet), r, inside, rng, max_depth=6)
    vessels = _rasterise_tubes(trees, axes, spacing) & liver
    paint(vessels, vessel_hu + rng.normal(0, 5), 'liver vessels')

    # --- acquisition: blur (PSF) and noise -----------------------------------------------
    hu = ndimage.gaussian_filter(hu, sigma=0.6)
    hu += rng.normal(0, rng.uniform(8, 15), size=shape).astype(np.float32)
    hu[~body] = -1000 + rng.normal(0, 3, size=int((~body).sum()))
    labels = np.zeros(shape, np.uint8)
    labels[liver] = 1
    labels[vessels] = 2
    log.debug("phantom: liver %.2f L, vessels %.1f ml", liver.sum() * np.prod(spacing) / 1e6,
              vessels.sum() * np.prod(spacing) / 1e3)
    return Phantom(image_hu=hu.astype(np.float32), labels=labels,
                   affine=phantom_affine(shape, spacing), spacing=spacing, tissue=tissue)


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())[1:]
    return lab == 1 + int(np.argmax(sizes))


def _smooth_noise(shape: Sequence[int], rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Unit-variance Gaussian random field smoothed by ``sigma`` voxels; float32."""
    f = rng.standard_normal(size=tuple(shape), dtype=np.float32)
    f = ndimage.gaussian_filter(f, sigma, truncate=2.5)
    return (f - f.mean()) / (f.std() + 1e-6)


def _nearest_inside(p: np.ndarray, mask: np.ndarray, axes: list[np.ndarray],
                    spacing: Sequence[float]) -> np.ndarray:
    """World point of the ``mask`` voxel nearest to ``p`` (mm)."""
    origin = np.array([a[0] for a in axes])
    pts = np.argwhere(mask) * np.asarray(spacing) + origin
    return pts[int(np.argmin(((pts - p) ** 2).sum(1)))]


def write_phantom_cohort(
    outdir: str | os.PathLike[str],
    n: int,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
) -> list[str]:
    """Write ``n`` phantoms in the ``folder`` layout: images/<id>.nii.gz, labels/<id>.nii.gz.

    Images are int16 HU NIfTI, labels uint8, both with the RAS affine. Phantom ``i`` uses
    the i-th child of ``numpy.random.SeedSequence(seed)``. Returns the ids written.
    Files are written under a temporary name and renamed, so none is left half-written.
    """
    import nibabel as nib

    from ddmr.io.files import atomic_path

    out = Path(outdir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    ids: list[str] = []
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(n)):
        ph = make_ct_phantom(np.random.default_rng(child), shape, spacing)
        pid = f"phantom-{i:03d}"
        img = nib.Nifti1Image(np.clip(np.rint(ph.image_hu), -1024, 3071).astype(np.int16),
                              ph.affine)
        lab = nib.Nifti1Image(ph.labels, ph.affine)
        for im, sub in ((img, "images"), (lab, "labels")):
            im.header.set_xyzt_units("mm")
            im.set_qform(ph.affine, code=1)
            im.set_sform(ph.affine, code=1)
            im.header["descrip"] = b"ddmr SYNTHETIC CT phantom (not patient data)"
            with atomic_path(out / sub / f"{pid}.nii.gz") as temporary:
                nib.save(im, str(temporary))
        ids.append(pid)
    (out / "README.txt").write_text(
        "SYNTHETIC abdominal CT phantoms made by ddmr.data.phantoms.write_phantom_cohort "
        f"(n={n}, seed={seed}, shape={tuple(shape)}, spacing={tuple(spacing)} mm).\n"
        "Not patient data. Labels: 0 background, 1 liver parenchyma, 2 liver vessels.\n"
    )
    return ids
