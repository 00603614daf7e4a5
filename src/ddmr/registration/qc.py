"""The quality-control verdict of one registration: did it work, and if not, why.

Measured on the fixed image's grid (a regular subsample of at most :data:`QC_POINTS`
voxels), in world space:

* foreground overlap: Dice of the fixed foreground and the moving foreground
  (:func:`ddmr.registration.moments.foreground_mask`) sampled through the headers alone
  (before) and through the registration (after);
* similarity: global NCC of the fixed image and the moving image, before and after,
  inside the fixed foreground (grown by :data:`REGION_MARGIN` voxels);
* the field: finite everywhere, folding (% of voxels with det J <= 0), the range of the
  Jacobian determinant (0.1 and 99.9 percentiles), and the part of the fixed foreground
  it compresses to under :data:`COMPRESSED_BELOW` (det J): the moving image stretched
  over anatomy it does not show;
* the affine part: its scales (singular values of the linear part), their ratio
  (anisotropy), shear, and its turn against the headers (the angle of its rotation);
* the images themselves: each has spatial structure (neighbouring voxels correlate, as
  in any scan and unlike noise), and both are of one kind for a similarity that compares
  intensities directly (NCC, LNCC): both CTs in Hounsfield units or neither.

Each check has a limit (:class:`QCLimits`, calibrated on every pair the benchmarks hold:
``benchmarks/bench_qc.py``); a registration passes when all hold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ddmr.spatial.grid import Geometry, index_box

#: Most fixed-grid voxels the overlap and similarity are measured on.
QC_POINTS = 300_000
#: Voxels of background kept around the fixed foreground for the similarity.
REGION_MARGIN = 2
#: det J below this (a fixed region showing a moving region over 3x smaller) counts as
#: compressed in the ``compressed`` check.
COMPRESSED_BELOW = 0.3


@dataclass(frozen=True)
class QCLimits:
    """min_overlap: foreground Dice after registration; max_similarity_drop: how much
    lower NCC after may be than before; max_folding_percent; jacobian_range: allowed
    (0.1 percentile, 99.9 percentile) of det J; scale_range: allowed affine scales;
    max_shear: allowed affine shear (off-diagonal of the stretch, relative);
    max_inverse_error: mean ``|phi(phi^-1(q)) - q|`` (moving voxels) of the inverse;
    min_similarity: NCC after registration, whatever it was before; max_anisotropy:
    largest over smallest affine scale; max_turn_degrees: the affine part's rotation;
    min_structure: neighbour correlation of each image (:func:`neighbour_correlation`);
    max_compressed_percent: % of the fixed foreground with det J below
    :data:`COMPRESSED_BELOW`; min_guided_dsc: mean DSC of the guided labels
    (``--guide``) after registration (the labels the user named as anchors)."""

    min_overlap: float = 0.5
    max_similarity_drop: float = 0.02
    min_similarity: float = 0.5
    max_folding_percent: float = 1.0
    jacobian_range: tuple[float, float] = (0.02, 50.0)
    scale_range: tuple[float, float] = (0.5, 2.0)
    max_shear: float = 0.3
    max_anisotropy: float = 1.4
    max_turn_degrees: float = 60.0
    max_inverse_error: float = 0.5
    min_structure: float = 0.3
    max_compressed_percent: float = 15.0
    min_guided_dsc: float = 0.5


@dataclass(frozen=True)
class Check:
    """One check: its name, whether it passed, and a phrase for the console."""

    name: str
    passed: bool
    text: str


@dataclass
class Verdict:
    """checks: every check made; measures: the numbers behind them (JSON-ready)."""

    checks: list[Check]
    measures: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    def line(self) -> str:
        """One console line: ``QC pass: ...`` or ``QC FAILED: <the failed checks>``."""
        if self.passed:
            return "QC pass: " + "; ".join(check.text for check in self.checks)
        return "QC FAILED: " + "; ".join(check.text for check in self.failed)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed,
                "failed": [check.name for check in self.failed],
                "checks": [asdict(check) for check in self.checks],
                "measures": self.measures}


#: A moving image that shows this fraction of the fixed foreground shows all of it.
SEEN_WHOLE = 0.95
#: A partial field of view must show at least this fraction of the fixed foreground.
MIN_SEEN = 0.05


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float(np.logical_and(a, b).sum()) / total if total else 0.0


def _unit(values: np.ndarray) -> np.ndarray:
    """``values`` as float64 divided by their largest magnitude (sums of squares of
    intensities near float32's limit stay finite)."""
    values = values.astype(np.float64)
    largest = float(np.abs(values).max()) if values.size else 0.0
    return values / largest if largest > 0 else values


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Global NCC (:func:`ddmr.losses.ncc.global_ncc`) of two arrays, in float64."""
    import torch

    from ddmr.losses.ncc import global_ncc

    pair = (torch.from_numpy(_unit(values).reshape(1, -1)) for values in (a, b))
    return float(global_ncc(*pair)[0])


def affine_shape(point_map: np.ndarray) -> tuple[np.ndarray, float]:
    """Scales (3,) (singular values, largest first) and shear of the linear part of a
    (4, 4) point map: the largest off-diagonal of its stretch ``S`` (``A = R S``, polar
    decomposition) relative to the diagonal."""
    linear = np.asarray(point_map, dtype=np.float64)[:3, :3]
    _, sigma, vt = np.linalg.svd(linear)
    stretch = vt.T @ np.diag(sigma) @ vt
    diagonal = np.sqrt(np.abs(np.outer(np.diag(stretch), np.diag(stretch))))
    off = np.abs(stretch - np.diag(np.diag(stretch))) / np.maximum(diagonal, 1e-12)
    return sigma, float(off.max())


def affine_anisotropy(point_map: np.ndarray) -> float:
    """The largest over the smallest scale of the linear part of a (4, 4) point map
    (:func:`affine_shape`): 1 for a similarity transform."""
    scales, _ = affine_shape(point_map)
    return float(scales.max() / max(scales.min(), 1e-12))


def affine_turn_degrees(point_map: np.ndarray) -> float:
    """The angle (degrees) of the rotation ``R`` of the linear part ``A = R S`` (polar
    decomposition) of a (4, 4) point map: how far it turns the moving image against the
    orientation its header gives it."""
    u, _, vt = np.linalg.svd(np.asarray(point_map, dtype=np.float64)[:3, :3])
    rotation = u @ vt
    cosine = (np.trace(rotation) - 1.0) / 2.0
    return math.degrees(math.acos(min(1.0, max(-1.0, cosine))))




@dataclass(frozen=True)
class Traits:
    """What QC reads off one image on its own. structure: :func:`neighbour_correlation`
    (about 0.7-1 for scans, 0 for noise); hounsfield: its values are a CT's in Hounsfield
    units (air at -1000)."""

    structure: float
    hounsfield: bool


def neighbour_correlation(array: np.ndarray, mask: np.ndarray) -> float:
    """Mean over the three axes of the correlation between a voxel and its next neighbour
    along the axis, over neighbour pairs that touch the foreground ``mask`` (I, J, K)
    (a regular subsample of at most about :data:`QC_POINTS` pairs per axis): near 1 for
    anatomy, near 0 for noise."""
    if not mask.any():
        mask = np.ones(array.shape, dtype=bool)
    box = index_box(mask)
    values, inside = array[box], mask[box]
    correlations = []
    for axis in range(3):
        along = np.moveaxis(values, axis, 0)
        kept = np.moveaxis(inside, axis, 0)
        step = max(1, math.ceil((along.size / QC_POINTS) ** 0.5))
        along, kept = along[:, ::step, ::step], kept[:, ::step, ::step]
        pairs = kept[:-1] | kept[1:]
        if along.shape[0] < 2 or pairs.sum() < 2:
            continue
        correlations.append(_ncc(along[:-1][pairs], along[1:][pairs]))
    return float(np.mean(correlations)) if correlations else 1.0


def image_traits(array: np.ndarray, mask: np.ndarray) -> Traits:
    """The :class:`Traits` of an image (I, J, K) with foreground ``mask``."""
    from ddmr.registration.modality import looks_like_ct

    return Traits(neighbour_correlation(array, mask),
                  looks_like_ct(array[subsample(array.shape)]))


def subsample(shape: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    """A regular subsample of a grid of ``shape`` with at most :data:`QC_POINTS` voxels."""
    stride = max(1, math.ceil((np.prod(shape, dtype=np.float64) / QC_POINTS) ** (1 / 3)))
    return (slice(None, None, stride),) * 3


@dataclass(frozen=True)
class QCInputs:
    """What :func:`assess` needs, on the subsample of the fixed grid (equal shapes):
    fixed image and foreground; the moving image and foreground seen through the headers
    alone (``*_before``) and through the registration (``*_after``)."""

    fixed: np.ndarray
    fixed_mask: np.ndarray
    moving_before: np.ndarray
    mask_before: np.ndarray
    moving_after: np.ndarray
    mask_after: np.ndarray
    seen_before: np.ndarray | None = None
    seen_after: np.ndarray | None = None

    def partial(self) -> bool:
        """Whether the moving image shows less than :data:`SEEN_WHOLE` of the fixed
        foreground after registration (``seen_after``: where a point falls inside the
        moving grid; a partial field of view): the image checks then count only there."""
        if self.seen_after is None or not self.fixed_mask.any():
            return False
        seen = np.count_nonzero(self.fixed_mask & self.seen_after)
        return seen < SEEN_WHOLE * np.count_nonzero(self.fixed_mask)


def _image_checks(traits: tuple[Traits, Traits], same_kind: bool, limits: QCLimits
                  ) -> tuple[list[Check], dict[str, Any]]:
    """The checks of the two images themselves: structure, and one kind of image where
    the similarity compares intensities directly (``same_kind``)."""
    fixed, moving = traits
    measures = {"structure_fixed": fixed.structure, "structure_moving": moving.structure,
                "hounsfield_fixed": fixed.hounsfield, "hounsfield_moving": moving.hounsfield}
    flat = [side for side, t in zip(("fixed", "moving"), traits, strict=True)
            if not t.structure >= limits.min_structure]
    checks = [Check("structure", not flat,
                    f"structure {fixed.structure:.2f}/{moving.structure:.2f}"
                    + ("" if not flat else f" (the {' and '.join(flat)} image has no spatial "
                       f"structure, below {limits.min_structure:g}: noise, not a scan)"))]
    if same_kind:
        ok = fixed.hounsfield == moving.hounsfield
        ct = "fixed" if fixed.hounsfield else "moving"
        checks.append(Check("image_kind", ok, "one kind of image" if ok else
                            f"the {ct} image is a CT in Hounsfield units and the other is not "
                            "(NCC compares images of one kind: use --model none "
                            "--similarity mi or mind for CT against MR)"))
    return checks, measures


def _affine_checks(point_map: np.ndarray | None, limits: QCLimits
                   ) -> tuple[list[Check], dict[str, Any]]:
    """Scale, anisotropy, shear and turn of the affine part."""
    point_map = np.eye(4) if point_map is None else point_map
    scales, shear = affine_shape(point_map)
    anisotropy = affine_anisotropy(point_map)
    turn = affine_turn_degrees(point_map)
    measures = {"affine_scales": scales.tolist(), "affine_shear": shear,
                "affine_anisotropy": anisotropy, "affine_turn_degrees": turn}
    lo, hi = limits.scale_range
    ok = bool(lo <= scales.min() and scales.max() <= hi)
    checks = [Check("affine_scale", ok, f"affine scale {scales.min():.2f}..{scales.max():.2f}"
                    + ("" if ok else f" (outside {lo:g}..{hi:g})"))]
    ok = anisotropy <= limits.max_anisotropy
    checks.append(Check("affine_anisotropy", ok, f"anisotropy {anisotropy:.2f}"
                        + ("" if ok else f" (over {limits.max_anisotropy:g}: squeezed along "
                                         "one axis)")))
    ok = shear <= limits.max_shear
    checks.append(Check("affine_shear", ok, f"shear {shear:.2f}"
                        + ("" if ok else f" (over {limits.max_shear:g})")))
    ok = turn <= limits.max_turn_degrees
    checks.append(Check("affine_turn", ok, f"turn {turn:.0f} deg"
                        + ("" if ok else f" (over {limits.max_turn_degrees:g} deg against the "
                                         "headers: not the same anatomy, or a header's "
                                         "orientation is wrong)")))
    return checks, measures


def assess(inputs: QCInputs, displacement_mm: np.ndarray, jacobian: np.ndarray,
           point_map: np.ndarray | None, limits: QCLimits | None = None,
           inverse_error: float | None = None,
           traits: tuple[Traits, Traits] | None = None, same_kind: bool = True) -> Verdict:
    """The :class:`Verdict` of a registration: ``displacement_mm`` (3, I, J, K) and
    ``jacobian`` (I, J, K) on the whole fixed grid, ``point_map`` (4, 4) its affine part
    (None: identity), ``inverse_error`` the mean error of its inverse in moving voxels
    (None: no inverse checked), ``traits`` the two images' :class:`Traits` (None: not
    checked), ``same_kind``: the similarity needs images of one kind (NCC, LNCC)."""
    from scipy import ndimage

    limits = limits or QCLimits()
    checks: list[Check] = []
    finite = bool(np.isfinite(displacement_mm).all() and np.isfinite(jacobian).all())
    measures: dict[str, Any] = {"finite": finite}
    checks.append(Check("finite", finite, "field finite" if finite else
                        "the displacement has NaN or Inf values (a model with non-finite "
                        "weights?)"))
    region = ndimage.binary_dilation(inputs.fixed_mask, iterations=REGION_MARGIN)
    fixed_mask = inputs.fixed_mask
    regions = (region, region)
    if inputs.partial():  # what both scans show: before (headers) and after apart
        seen = np.count_nonzero(fixed_mask & inputs.seen_after) / np.count_nonzero(fixed_mask)
        measures["seen_fraction"] = float(seen)
        checks.append(Check("seen", seen >= MIN_SEEN,
                            f"partial field of view: the moving image shows {100 * seen:.0f} "
                            "% of the fixed foreground; the checks below count only there"
                            + ("" if seen >= MIN_SEEN else f" (below {100 * MIN_SEEN:g} %)")))
        fixed_mask = fixed_mask & inputs.seen_after
        regions = (region & inputs.seen_before, region & inputs.seen_after)
        overlap_before = _dice(inputs.fixed_mask & inputs.seen_before, inputs.mask_before)
    else:
        overlap_before = _dice(inputs.fixed_mask, inputs.mask_before)
    overlap_after = _dice(fixed_mask, inputs.mask_after)
    ncc_before, ncc_after = (
        _ncc(inputs.fixed[where], moving[where]) if finite and where.any() else 0.0
        for where, moving in zip(regions, (inputs.moving_before, inputs.moving_after),
                                 strict=True))
    measures.update(foreground_overlap_before=overlap_before,
                    foreground_overlap_after=overlap_after,
                    ncc_before=ncc_before, ncc_after=ncc_after)
    ok = finite and overlap_after >= limits.min_overlap
    checks.append(Check("foreground_overlap", ok,
                        f"foreground overlap {overlap_before:.2f} -> {overlap_after:.2f}"
                        + ("" if ok else f" (below {limits.min_overlap:g}: the images were "
                                         "not brought together)")))
    dropped = not ncc_after >= ncc_before - limits.max_similarity_drop
    low = not ncc_after >= limits.min_similarity
    checks.append(Check("similarity", finite and not (dropped or low),
                        f"NCC {ncc_before:.2f} -> {ncc_after:.2f}"
                        + (" (lower after registration than before)" if dropped else
                           f" (below {limits.min_similarity:g}: the images do not match)"
                           if low else "")))
    if finite:
        folding = float(100.0 * np.mean(jacobian <= 0))
        low, high = (float(v) for v in np.percentile(jacobian, [0.1, 99.9]))
    else:
        folding, low, high = math.nan, math.nan, math.nan
    measures.update(folding_percent=folding, jacobian_p0_1=low, jacobian_p99_9=high)
    sampled = jacobian[subsample(jacobian.shape)]  # on the grid of ``inputs``
    if sampled.shape == fixed_mask.shape and fixed_mask.any():
        sampled = sampled[fixed_mask]
    compressed = float(100.0 * np.mean(sampled < COMPRESSED_BELOW)) if finite else math.nan
    measures["compressed_percent"] = compressed
    ok = folding <= limits.max_folding_percent
    checks.append(Check("folding", ok, f"folding {folding:.3f} %"
                        + ("" if ok else f" (over {limits.max_folding_percent:g} %)")))
    lo, hi = limits.jacobian_range
    ok = lo <= low and high <= hi
    checks.append(Check("jacobian", ok, f"det J {low:.2f}..{high:.2f} (0.1-99.9th percentile)"
                        + ("" if ok else f" (outside {lo:g}..{hi:g}: extreme local volume "
                                         "change)")))
    ok = compressed <= limits.max_compressed_percent
    checks.append(Check("compressed", ok, f"compressed {compressed:.1f} %"
                        + ("" if ok else f" (over {limits.max_compressed_percent:g} % of the "
                                         f"fixed foreground at det J < {COMPRESSED_BELOW:g}: "
                                         "the moving image stretched over anatomy it does "
                                         "not show)")))
    more, values = _affine_checks(point_map, limits)
    checks += more
    measures.update(values)
    if inverse_error is not None:
        measures["inverse_error_voxels"] = inverse_error
        ok = bool(inverse_error <= limits.max_inverse_error)
        checks.append(Check("inverse", ok, f"inverse error {inverse_error:.3f} voxel"
                            + ("" if ok else f" (over {limits.max_inverse_error:g}: "
                                             "inverse_displacement.nii.gz is inexact)")))
    if traits is not None:
        more, values = _image_checks(traits, same_kind, limits)
        checks += more
        measures.update(values)
    return Verdict(checks, measures)


def sample_points(array: np.ndarray, geometry: Geometry, points: np.ndarray,
                  nearest: bool = False) -> np.ndarray:
    """Values of ``array`` (I, J, K) on ``geometry`` at RAS world points (n, 3): linear
    interpolation (nearest for masks), 0 beyond half a voxel outside the grid."""
    import torch

    from ddmr.spatial.warp import sample_image

    index = geometry.world_to_index(points).T.astype(np.float32)  # (3, n)
    if nearest:
        rounded = np.rint(index).astype(np.int64)
        inside = np.all((rounded >= 0) & (rounded < np.asarray(geometry.shape)[:, None]), 0)
        out = np.zeros(points.shape[0], dtype=array.dtype)
        out[inside] = array[tuple(rounded[:, inside])]
        return out
    image = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    return sample_image(image, torch.from_numpy(index)).numpy()


def add_guidance(verdict: Verdict, guidance: dict[str, Any], limits: QCLimits | None = None
                 ) -> None:
    """Add the guided labels' overlap to ``verdict``, apart from the held-out labels'
    (:func:`ddmr.registration.scores.guided_apart`): a check that the guided labels
    overlap by at least ``min_guided_dsc``, and both means as measures."""
    limits = limits or QCLimits()
    guided, held_out = guidance["dsc_guided"], guidance["dsc_held_out"]
    verdict.measures.update(guided_dsc=guided, held_out_dsc=held_out)
    ok = guided is not None and guided >= limits.min_guided_dsc
    text = ("guided labels DSC " + ("-" if guided is None else f"{guided:.2f}")
            + (f", held out {held_out:.2f}" if held_out is not None else ""))
    verdict.checks.append(Check("guided_labels", ok, text + ("" if ok else (
        f" (below {limits.min_guided_dsc:g}: the guided labels were not brought together)"))))


def _inside(geometry: Geometry, points: np.ndarray) -> np.ndarray:
    """(n,) bool: RAS world points (n, 3) within half a voxel of ``geometry``'s grid."""
    index = geometry.world_to_index(points)
    return np.all((index >= -0.5) & (index <= np.asarray(geometry.shape) - 0.5), axis=1)


def assess_registration(fixed, moving, masks: tuple[np.ndarray, np.ndarray], native,
                        jacobian: np.ndarray, point_map: np.ndarray | None,
                        limits: QCLimits | None = None,
                        inverse_error: float | None = None, same_kind: bool = True
                        ) -> Verdict:
    """The :class:`Verdict` of a registration of ``moving`` to ``fixed``
    (:class:`ddmr.registration.inputs.Volume`) with foregrounds ``masks``: its
    :class:`ddmr.registration.native.NativeResult` and Jacobian on the fixed grid;
    ``same_kind``: the similarity needs images of one kind (see :func:`assess`)."""
    where = subsample(fixed.geometry.shape)
    index = np.stack(np.meshgrid(*[np.arange(n)[s] for n, s in
                                   zip(fixed.geometry.shape, where, strict=True)],
                                 indexing="ij"), -1)
    shape = index.shape[:3]
    points = fixed.geometry.index_to_world(index.reshape(-1, 3))
    moved = points + native.displacement_mm[(slice(None), *where)].reshape(3, -1).T
    moved = np.where(np.abs(moved) < 1e9, moved, 1e9)  # far outside, NaN and Inf alike
    inputs = QCInputs(
        fixed.array[where], masks[0][where],
        sample_points(moving.array, moving.geometry, points).reshape(shape),
        sample_points(masks[1], moving.geometry, points, nearest=True).reshape(shape),
        native.warped[where],
        sample_points(masks[1], moving.geometry, moved, nearest=True).reshape(shape),
        _inside(moving.geometry, points).reshape(shape),
        _inside(moving.geometry, moved).reshape(shape))
    traits = (image_traits(fixed.array, masks[0]), image_traits(moving.array, masks[1]))
    verdict = assess(inputs, native.displacement_mm, jacobian, point_map, limits,
                     inverse_error, traits, same_kind)
    seen = inputs.seen_after.reshape(-1)
    if "seen_fraction" in verdict.measures and seen.any():
        # where the pictures of a partial field of view cut (RegistrationResult.view_centre)
        verdict.measures["seen_centre_ras"] = points[seen].mean(axis=0).tolist()
    return verdict
