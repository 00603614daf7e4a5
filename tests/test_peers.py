"""Peer methods (ddmr.baselines.peers): each returns its whole transform as one RAS mm
displacement on the fixed grid, and warping the moving image through it in world space
(SimpleITK's DisplacementFieldTransform, built from the field) reproduces the peer's own
warped image. Pairs: two bundled heads at 4 mm (48^3), the moving one re-stored with its
first axis flipped and its origin moved 150 mm, so headers disagree as between people."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from ddmr.baselines import peers
from ddmr.errors import ConfigError
from ddmr.io.convert import from_sitk, to_sitk
from ddmr.io.images import load_image
from ddmr.spatial.grid import Geometry

# SWIG's import-time deprecation notices from itk's wrappers
pytestmark = pytest.mark.filterwarnings("ignore:builtin type:DeprecationWarning")

BRAIN = resources.files("ddmr") / "data" / "sample" / "brain" / "images"


def small_head(subject: str, factor: int = 2) -> tuple[np.ndarray, Geometry]:
    """A bundled head (96^3, 2 mm) averaged down by ``factor`` on its own grid."""
    array, geometry = load_image(str(BRAIN / f"{subject}.nii.gz"))
    array, geometry = from_sitk(sitk.BinShrink(to_sitk(array, geometry), [factor] * 3))
    return np.ascontiguousarray(array, dtype=np.float32), geometry


def restored(image: tuple[np.ndarray, Geometry], offset=(150.0, 0.0, 0.0)
             ) -> tuple[np.ndarray, Geometry]:
    """The same head in world space shifted by ``offset`` mm, stored with axis i reversed
    (a header that differs in origin and direction)."""
    array, geometry = image
    affine = geometry.affine.copy()
    affine[:3, 3] = geometry.index_to_world(np.array([geometry.shape[0] - 1, 0, 0]))
    affine[:3, 0] *= -1.0
    affine[:3, 3] += np.asarray(offset)
    return np.ascontiguousarray(array[::-1]), Geometry(affine, geometry.shape)


@pytest.fixture(scope="module")
def pair():
    fixed = small_head("pycortex-s1")
    moving = restored(small_head("itk-kmeans"))
    return fixed, moving


def sitk_warp(moving, displacement_mm, fixed_geometry) -> np.ndarray:
    """The moving image resampled by SimpleITK through the displacement (linear, 0 out)."""
    reference = to_sitk(np.zeros(fixed_geometry.shape, np.float32), fixed_geometry)
    transform = peers.displacement_transform(displacement_mm, fixed_geometry)
    out = sitk.Resample(to_sitk(*moving), reference, transform, sitk.sitkLinear, 0.0)
    return from_sitk(out)[0]


def foreground_correlation(a, b, fixed) -> float:
    mask = fixed > 0.05 * fixed.max()
    return float(np.corrcoef(a[mask].ravel(), b[mask].ravel())[0, 1])


def check_convention(result: peers.PeerResult, fixed, moving) -> None:
    shape = fixed[1].shape
    assert result.displacement_mm.shape == (3, *shape)
    assert result.displacement_mm.dtype == np.float32
    assert np.isfinite(result.displacement_mm).all()
    assert result.seconds > 0 and result.warped.shape == shape
    # the whole transform is in the field, the header offsets (~220 mm) included
    shift = peers.centre_of_mass(moving) - peers.centre_of_mass(fixed)
    mask = fixed[0] > 0.05 * fixed[0].max()
    assert np.linalg.norm(result.displacement_mm[:, mask].mean(axis=1) - shift) < 20.0
    ours = sitk_warp(moving, result.displacement_mm, fixed[1])
    assert foreground_correlation(ours, result.warped, fixed[0]) >= 0.99
    # and it registered: closer to the fixed head than the centre-of-mass start
    start = peers.warp(moving, np.broadcast_to(shift[:, None, None, None], (3, *shape)),
                       fixed[1])
    assert (foreground_correlation(ours, fixed[0], fixed[0])
            > foreground_correlation(start, fixed[0], fixed[0]))


# -- conventions, no peer needed --------------------------------------------------------


def test_warp_matches_simpleitk_displacement_transform(pair):
    fixed, moving = pair
    rng = np.random.default_rng(0)
    shape = fixed[1].shape
    grid = np.indices(shape, dtype=np.float64) / np.asarray(shape)[:, None, None, None]
    shift = peers.centre_of_mass(moving) - peers.centre_of_mass(fixed)
    field = np.stack([shift[c] + 6.0 * np.sin(2 * np.pi * (grid * rng.uniform(-1, 1, (3, 1, 1, 1)))
                                              .sum(axis=0) + rng.uniform(0, 6))
                      for c in range(3)]).astype(np.float32)
    ours = peers.warp(moving, field, fixed[1])
    theirs = sitk_warp(moving, field, fixed[1])
    inner = (slice(2, -2),) * 3  # ITK and ddmr differ only in the half voxel at the edge
    np.testing.assert_allclose(ours[inner], theirs[inner], atol=1e-4)
    labels = (np.round(moving[0] * 4).astype(np.uint8), moving[1])
    warped_labels = peers.warp(labels, field, fixed[1], labels=True)
    nearest = from_sitk(sitk.Resample(to_sitk(*labels), to_sitk(fixed[0], fixed[1]),
                                      peers.displacement_transform(field, fixed[1]),
                                      sitk.sitkNearestNeighbor, 0))[0]
    assert np.mean(warped_labels == nearest) > 0.97


def test_itk_vectors_round_trip_and_sign():
    rng = np.random.default_rng(1)
    ras = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
    lps = peers.ras_to_itk_vectors(ras)
    assert lps.shape == (4, 5, 6, 3)
    np.testing.assert_allclose(lps[..., 0], -ras[0], rtol=1e-6)
    np.testing.assert_allclose(lps[..., 2], ras[2], rtol=1e-6)
    np.testing.assert_allclose(peers.itk_vectors_to_ras(lps), ras, rtol=1e-6)


def test_centre_of_mass_follows_the_header(pair):
    fixed, _ = pair
    moved = restored(fixed, offset=(150.0, -20.0, 5.0))
    np.testing.assert_allclose(peers.centre_of_mass(moved) - peers.centre_of_mass(fixed),
                               [150.0, -20.0, 5.0], atol=1e-6)


def test_unknown_peer_and_available():
    with pytest.raises(ConfigError, match="unknown peer"):
        peers.run_peer("nope", None, None)
    assert set(peers.available()) <= set(peers.PEERS)


# -- the peers --------------------------------------------------------------------------


def test_syn(pair):
    pytest.importorskip("ants")
    fixed, moving = pair
    result = peers.syn(fixed, moving, seed=1, aff_iterations=(100, 50, 10),
                       aff_shrink_factors=(4, 2, 1), aff_smoothing_sigmas=(2, 1, 0),
                       reg_iterations=(20, 10, 0))
    check_convention(result, fixed, moving)


def test_greedy(pair):
    pytest.importorskip("picsl_greedy")
    fixed, moving = pair
    result = peers.greedy(fixed, moving, affine_iterations=(50, 20), iterations=(40, 20),
                          threads=2)
    assert "Level" in result.details["log"]  # greedy's own log was captured, not printed
    check_convention(result, fixed, moving)


def test_elastix(pair, tmp_path, monkeypatch):
    pytest.importorskip("itk")
    if peers.version("elastix") is None:
        pytest.skip("itk-elastix is not installed")
    monkeypatch.chdir(tmp_path)
    fixed, moving = pair
    fast = {"MaximumNumberOfIterations": 40, "NumberOfResolutions": 2,
            "GridSpacingSchedule": [2, 1],  # and a cheaper automatic step-size estimate:
            "ASGDParameterEstimationMethod": "DisplacementDistribution"}
    result = peers.elastix(fixed, moving, overrides=fast, threads=2)
    check_convention(result, fixed, moving)
    # elastix's bare default starts from the identity: no overlap between these headers
    with pytest.raises(RuntimeError, match="outside moving image buffer"):
        peers.elastix(fixed, moving, initialise=None,
                      overrides={"MaximumNumberOfIterations": 5})
    assert not list(tmp_path.iterdir())  # elastix and transformix wrote nothing here


def test_convexadam(pair):
    pytest.importorskip("convexAdam")
    import warnings

    fixed, moving = pair
    result = peers.convexadam(fixed, moving, selected_niter=20)
    # convexAdam runs filterwarnings("ignore") when imported: undone
    assert not any(action == "ignore" and message is None and category is Warning
                   and module is None for action, message, category, module, _
                   in warnings.filters)
    check_convention(result, fixed, moving)
    with pytest.raises(ConfigError, match="unknown ConvexAdam setting"):
        peers.convexadam(fixed, moving, bogus=1)
