"""Per-pair refinement (ddmr.registration.refine, ``ddmr register --refine``,
``ddmr evaluate --refine``): zero iterations change nothing, the objective never rises,
a known deformation of a bundled held-out head is recovered better than by the start."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import smooth_field, smooth_volume
from ddmr.cli import main
from ddmr.errors import ConfigError
from ddmr.evaluate import metrics
from ddmr.io.images import save_image, save_labels
from ddmr.registration.refine import (
    RefineObjective,
    RefineSettings,
    refine,
    refine_stops,
    settings_for,
)
from ddmr.spatial.field import forward_jacobian_determinant
from ddmr.spatial.grid import Geometry
from ddmr.spatial.warp import warp_image, warp_labels
from register_helpers import oblique_fixed, other_moving, sample_scene, save_tiny_model

SHAPE = (20, 22, 24)


@pytest.fixture(scope="module")
def smooth_pair():
    """A smooth volume and the same volume warped by a known smooth field (voxels)."""
    fixed = smooth_volume(SHAPE, seed=3)
    truth = smooth_field(SHAPE, amplitude=2.0, seed=4)
    moving = warp_image(fixed, -truth, padding="border")  # fixed(x) ~ moving(x + truth(x))
    return fixed, moving, truth


@pytest.fixture(scope="module")
def head_pair():
    """The bundled held-out head itk-kmeans at 32^3 (about 6 mm) deformed by the
    augmentation layer (thin-plate spline only, up to 15 mm): the exact field is known."""
    from ddmr.augment import AugmentationConfig, AugmentationLayer
    from ddmr.data.cohort import cohort_split, sample_cohort

    assert "itk-kmeans" in cohort_split()["test"]
    subject = sample_cohort(["itk-kmeans"])[0]
    image = torch.from_numpy(subject.image)[None, None]
    labels = torch.from_numpy(subject.labels)[None, None]
    layer = AugmentationLayer(AugmentationConfig(rigid=False, intensity=False, max_tps=15.0),
                              output_shape=(32, 32, 32))
    return layer(image, labels, subject.spacing, generator=torch.Generator().manual_seed(1))


def _scores(pair, displacement: torch.Tensor) -> dict[str, float]:
    fixed_labels = pair.fixed_labels[0, 0].numpy()
    warped = warp_labels(pair.moving_labels, displacement)[0, 0].numpy()
    return {"dsc": float(np.nanmean(metrics.dice_per_label(fixed_labels, warped))),
            "tre": metrics.centroid_tre(fixed_labels, warped, pair.spacing),
            "dense_tre": metrics.dense_tre(displacement[0], pair.displacement[0], pair.spacing,
                                           fixed_labels > 0),
            "folding": metrics.folding_percent(displacement[0])}


# -- the optimiser --------------------------------------------------------------------------


def test_zero_iterations_return_the_start_exactly(smooth_pair):
    fixed, moving, truth = smooth_pair
    start = 0.5 * truth
    result = refine(fixed, moving, start, (2.0, 2.0, 2.0), RefineSettings(iterations=0))
    assert torch.equal(result.displacement, start)
    assert result.iterations == 0 and result.best_iteration == 0
    assert result.objective_after == result.objective_before
    assert result.correction_max_mm == 0.0


def test_refinement_lowers_its_own_objective(smooth_pair):
    fixed, moving, truth = smooth_pair
    settings = RefineSettings(iterations=30)
    result = refine(fixed, moving, torch.zeros_like(truth), (1.0, 1.0, 1.0), settings)
    assert result.objective_after < 0.5 * result.objective_before
    assert result.best_iteration > 0 and len(result.history) == 31
    assert result.objective_after == pytest.approx(min(result.history))
    # the reported objective is the returned field's, recomputed independently
    with torch.no_grad():
        total, _ = RefineObjective(fixed, moving, settings)(result.displacement)
    assert float(total) == pytest.approx(result.objective_after, rel=1e-5)
    # and the field moved towards the truth
    error_before = (truth ** 2).sum(1).sqrt().mean()
    error_after = ((result.displacement - truth) ** 2).sum(1).sqrt().mean()
    assert error_after < 0.75 * error_before


def test_refinement_never_returns_something_worse_than_its_start(smooth_pair):
    """A step far too large makes every iterate worse: the start comes back unchanged."""
    fixed, moving, truth = smooth_pair
    start = truth.clone()  # already (nearly) optimal
    result = refine(fixed, moving, start, (1.0, 1.0, 1.0),
                    RefineSettings(iterations=8, learning_rate=30.0))
    assert min(result.history[1:]) > result.history[0]  # every step made it worse
    assert result.best_iteration == 0
    assert result.objective_after == result.objective_before
    assert torch.equal(result.displacement, start)


def test_stops_of_one_run_equal_separate_runs(smooth_pair):
    fixed, moving, truth = smooth_pair
    settings = RefineSettings(iterations=0)
    stops = refine_stops(fixed, moving, 0.3 * truth, (1.0, 1.0, 1.0), settings, [0, 4, 9])
    for result in stops:
        alone = refine(fixed, moving, 0.3 * truth, (1.0, 1.0, 1.0),
                       RefineSettings(iterations=result.iterations))
        assert torch.equal(result.displacement, alone.displacement)
        assert result.objective_after == alone.objective_after
    assert [r.iterations for r in stops] == [0, 4, 9]
    assert stops[0].seconds <= stops[1].seconds <= stops[2].seconds


@pytest.mark.parametrize("similarity", ["ncc", "lncc", "gncc", "mi"])
def test_every_similarity_and_the_dice_term_lower_the_objective(smooth_pair, similarity):
    fixed, moving, truth = smooth_pair
    fixed_labels = (fixed > 0.5).to(torch.uint8) + (fixed > 0.8).to(torch.uint8)
    moving_labels = warp_labels(fixed_labels, -truth)
    settings = settings_for(None, 15, similarity, labels=True)
    assert settings.dice_weight == 1.0
    result = refine(fixed, moving, torch.zeros_like(truth), (1.0, 1.0, 1.0), settings,
                    fixed_labels, moving_labels)
    assert "dice" in result.terms_before
    assert result.objective_after < result.objective_before
    assert result.terms_after["similarity"] < result.terms_before["similarity"]


def test_refinement_runs_inside_inference_mode(smooth_pair):
    fixed, moving, truth = smooth_pair
    with torch.inference_mode():
        result = refine(fixed, moving, torch.zeros_like(truth), (1.0, 1.0, 1.0),
                        RefineSettings(iterations=3))
    assert result.objective_after < result.objective_before


def test_settings_follow_the_design_and_refuse_bad_values():
    from ddmr.config import get_design

    design = get_design("UW-NSD").replace(ncc_window=None, regulariser_weight=0.02)
    settings = settings_for(design.to_dict(), 10)
    assert settings.ncc_window is None and settings.similarity_name == "global NCC"
    assert settings.regulariser_weight == 0.02 and settings.dice_weight == 0.0
    assert settings_for(design, 10, "lncc").similarity_name == "local NCC (9^3)"
    assert settings_for(None, 5, "mi", regulariser_weight=0.1).regulariser_weight == 0.1
    for bad in ({"similarity": "ssd"}, {"iterations": -1}, {"learning_rate": 0.0},
                {"ncc_window": 4}, {"control_factor": 0}, {"regulariser_weight": -1.0}):
        with pytest.raises(ConfigError):
            RefineSettings(**bad)


def reference_box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """The cut-window mean by torch's own 3D average pooling (padding not counted)."""
    r = window // 2
    return torch.nn.functional.avg_pool3d(x, window, stride=1, padding=r,
                                          count_include_pad=False)


def test_fast_window_means_and_jacobian_match_the_reference():
    from ddmr.spatial.field import jacobian_determinant
    from ddmr.spatial.filters import box_mean

    x = torch.rand(1, 3, 9, 12, 11, generator=torch.Generator().manual_seed(0))
    for window in (1, 3, 5, 9):
        torch.testing.assert_close(box_mean(x, window), reference_box_mean(x, window),
                                   atol=2e-6, rtol=0)
    # a window wider than the volume (where avg_pool3d refuses) is the whole volume's mean
    whole = x.mean(dim=(2, 3, 4), keepdim=True).expand_as(x)
    torch.testing.assert_close(box_mean(x, 31), whole, atol=2e-6, rtol=0)
    field = smooth_field((10, 11, 12), amplitude=1.0, seed=2)
    # on a field linear along each axis, forward and central differences agree
    linear = torch.stack([0.1 * torch.arange(10.0).view(10, 1, 1).expand(10, 11, 12),
                          -0.2 * torch.arange(11.0).view(1, 11, 1).expand(10, 11, 12),
                          0.05 * torch.arange(12.0).view(1, 1, 12).expand(10, 11, 12)])[None]
    torch.testing.assert_close(forward_jacobian_determinant(linear),
                               jacobian_determinant(linear)[:, 0, :-1, :-1, :-1])
    assert forward_jacobian_determinant(field).shape == (1, 9, 10, 11)


# -- a known deformation of a bundled held-out head -------------------------------------------


@pytest.mark.parametrize("start", ["zero", "half"])
def test_refinement_recovers_a_known_deformation_of_a_held_out_head(head_pair, start):
    pair = head_pair
    initial = torch.zeros_like(pair.displacement) if start == "zero" \
        else 0.5 * pair.displacement
    result = refine(pair.fixed, pair.moving, initial, pair.spacing,
                    RefineSettings(iterations=100))
    before, after = _scores(pair, initial), _scores(pair, result.displacement)
    assert before["dense_tre"] > 2.0  # millimetres left to close (voxels of 6 mm)
    # seen: zero start 5.18 -> 3.69 mm, DSC 0.605 -> 0.704; half 2.59 -> 2.17, 0.675 -> 0.791
    assert after["dense_tre"] < 0.9 * before["dense_tre"]
    assert after["tre"] < before["tre"]
    assert after["dsc"] > before["dsc"] + 0.05
    assert after["folding"] <= 0.1
    assert 100 * result.folding_fraction <= 0.1
    assert result.objective_after < result.objective_before


# -- ddmr.register(refine=...) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def head_inputs(head_pair, tmp_path_factory):
    """The head pair as world-space arrays and files, and an identity model (a network
    that leaves everything to the refinement), its prepared grid that of the pair."""
    folder = tmp_path_factory.mktemp("refine")
    spacing = head_pair.spacing
    geometry = Geometry(np.diag([*spacing, 1.0]), (32, 32, 32))
    arrays = {"fixed": (head_pair.fixed[0, 0].numpy(), geometry),
              "moving": (head_pair.moving[0, 0].numpy(), geometry),
              "fixed_seg": (head_pair.fixed_labels[0, 0].numpy(), geometry),
              "moving_seg": (head_pair.moving_labels[0, 0].numpy(), geometry)}
    for name, (array, grid) in arrays.items():
        (save_labels if name.endswith("seg") else save_image)(
            folder / f"{name}.nii.gz", array, grid)
    model = _identity_model(folder / "identity.safetensors", 24, 32, spacing[0])
    return folder, arrays, model


def _identity_model(path, input_size: int, prepared_size: int, spacing: float):
    """A BL-N model file whose network outputs zero, trained (so its card says) on data
    prepared at ``prepared_size``^3 voxels of ``spacing`` mm and resized to ``input_size``."""
    from ddmr.config import get_design
    from ddmr.model.file import save_model
    from ddmr.nn import UNet, UNetConfig

    network = UNet(UNetConfig(encoder=(4, 8), head=(4,)))
    with torch.no_grad():
        network.output.weight.zero_()
        network.output.bias.zero_()
    preparation = {"format": "ddmr-prepared",
                   "options": {"size": [prepared_size] * 3, "spacing": spacing,
                               "resize": "fit", "ct_window": None, "crop_labels": []}}
    card = {"design": get_design("BL-N").to_dict(), "input_size": [input_size] * 3,
            "label_values": list(range(17)), "preparation": json.dumps(preparation)}
    return save_model(path, network, card)


def test_register_with_zero_iterations_is_exactly_the_network(head_inputs):
    import ddmr

    _, arrays, model = head_inputs
    plain = ddmr.register(**arrays, model=model)
    zero = ddmr.register(**arrays, model=model, refine=0)
    for name in ("displacement_mm", "warped", "warped_seg", "jacobian"):
        assert np.array_equal(getattr(plain, name), getattr(zero, name))
    assert zero.summary["refinement"] is None
    assert zero.summary["runtime_s"]["refine"] == 0.0


def test_register_refine_lowers_tre_and_raises_dsc_at_native_resolution(head_inputs):
    import ddmr

    _, arrays, model = head_inputs
    # the affine stage off: the refinement alone closes the gap from the identity network
    plain = ddmr.register(**arrays, model=model, affine="none")
    refined = ddmr.register(**arrays, model=model, refine=100, affine="none")
    before, after = plain.summary["metrics"], refined.summary["metrics"]
    assert after["dsc"] > before["dsc"] + 0.02
    assert after["tre"] < before["tre"]
    assert after["folding_percent"] <= 0.1
    block = refined.summary["refinement"]
    assert block["iterations"] == 100 and block["labels_used"] is False
    assert block["objective_after"] < block["objective_before"]
    assert block["similarity"] == "local NCC (9^3)"  # the design's image term (BL-N)
    # the default grid is the model card's prepared grid (finer than the 24^3 network grid)
    assert refined.summary["model_grid"]["shape"] == [24, 24, 24]
    assert block["grid"]["shape"] == [32, 32, 32]
    assert refined.summary["runtime_s"]["refine"] >= block["seconds"] > 0
    # --refine-spacing picks another grid over the same extent
    coarse = ddmr.register(**arrays, model=model, refine=5, refine_spacing=12.0)
    assert coarse.summary["refinement"]["grid"]["spacing_mm"][0] == pytest.approx(12.0, rel=0.1)


def test_register_refine_with_labels_and_bad_options(head_inputs):
    import ddmr
    from ddmr.errors import InputError

    _, arrays, model = head_inputs
    result = ddmr.register(**arrays, model=model, refine=10, refine_labels=True,
                           refine_similarity="gncc")
    block = result.summary["refinement"]
    assert block["labels_used"] is True and "dice" in block["terms_after"]
    assert block["similarity"] == "global NCC"
    with pytest.raises(InputError, match="both label maps"):
        ddmr.register(arrays["fixed"], arrays["moving"], model=model, refine=5,
                      refine_labels=True)
    with pytest.raises(InputError, match="refine"):
        ddmr.register(**arrays, model=model, refine=-1)
    with pytest.raises(InputError, match="refine-spacing"):
        ddmr.register(**arrays, model=model, refine=5, refine_spacing=0.0)
    with pytest.raises(ConfigError, match="similarity"):
        ddmr.register(**arrays, model=model, refine=5, refine_similarity="ssd")


def test_register_command_refine_writes_the_summary_block(head_inputs, tmp_path, capsys):
    folder, _, model = head_inputs
    out = tmp_path / "out"
    argv = ["register", "--fixed", str(folder / "fixed.nii.gz"),
            "--moving", str(folder / "moving.nii.gz"), "--model", str(model),
            "--fixed-seg", str(folder / "fixed_seg.nii.gz"),
            "--moving-seg", str(folder / "moving_seg.nii.gz"), "-o", str(out)]
    assert main([*argv, "--refine", "20", "--refine-similarity", "lncc"]) == 0
    printed = capsys.readouterr().out
    assert "refined 20 iterations" in printed and "objective" in printed
    summary = json.loads((out / "summary.json").read_text())
    block = summary["refinement"]
    for key in ("iterations", "similarity", "grid", "objective_before", "objective_after",
                "seconds", "folding_percent"):
        assert key in block
    assert block["iterations"] == 20 and block["objective_after"] <= block["objective_before"]
    runtime = summary["runtime_s"]
    assert runtime["refine"] > 0
    assert runtime["total"] == pytest.approx(sum(runtime[k] for k in (
        "load", "preprocess", "predict", "refine", "metrics", "qc", "write")), abs=0.01)
    # options that need --refine, or label maps, fail with one line and exit status 2
    assert main([*argv[:-2], "-o", str(tmp_path / "b"), "--refine-spacing", "2"]) == 2
    assert "need --refine" in capsys.readouterr().err
    no_segs = [*argv[:7], "-o", str(tmp_path / "c"), "--refine", "5", "--refine-labels"]
    assert main(no_segs) == 2
    assert "both label maps" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_register_pairs_passes_refinement_through(tmp_path):
    from ddmr.registration.batch import register_pairs

    fixed_geometry, moving_geometry = oblique_fixed(), other_moving()
    save_image(tmp_path / "f.nii.gz", sample_scene(fixed_geometry), fixed_geometry)
    save_image(tmp_path / "m.nii.gz", sample_scene(moving_geometry, (1, 2, 0)), moving_geometry)
    (tmp_path / "pairs.csv").write_text("fixed,moving,id\nf.nii.gz,m.nii.gz,a\n")
    model = save_tiny_model(tmp_path / "zero.safetensors", zero=True, size=16, spacing=2.0)
    register_pairs(tmp_path / "pairs.csv", tmp_path / "out", model, refine=3, progress=False)
    summary = json.loads((tmp_path / "out" / "a" / "summary.json").read_text())
    assert summary["refinement"]["iterations"] == 3


# -- ddmr evaluate --refine ---------------------------------------------------------------------


def test_evaluate_scores_models_with_and_without_refinement(tmp_path, capsys):
    from train_helpers import make_dataset

    prepared = make_dataset(tmp_path, n=4, size=16)
    assert main(["pairs", "--data", str(prepared), "--n", "1", "--seed", "2", "-o",
                 str(tmp_path / "pairs"), "--max-translation", "3", "--max-tps", "4",
                 "--no-intensity"]) == 0
    model = save_tiny_model(tmp_path / "zero.safetensors", zero=True, size=16)
    out = tmp_path / "results"
    argv = ["evaluate", "--pairs", str(tmp_path / "pairs"), "--models", str(model),
            "--baselines", "none", "--refine", "0,30,10", "-o", str(out), "--no-progress"]
    assert main(argv) == 0
    results = pd.read_csv(out / "per_pair.csv")
    names = ["BL-N", "BL-N+refine10", "BL-N+refine30", "none"]
    assert list(results["method"]) == names
    by = results.set_index("method")
    assert by.loc["BL-N", "dense_tre"] == pytest.approx(by.loc["none", "dense_tre"])
    assert by.loc["BL-N+refine30", "dense_tre"] < by.loc["BL-N", "dense_tre"]
    assert by.loc["BL-N+refine30", "ncc"] > by.loc["BL-N", "ncc"]
    assert by.loc["BL-N+refine30", "seconds"] > by.loc["BL-N+refine10", "seconds"] \
        > by.loc["BL-N", "seconds"]
    assert by.loc["BL-N+refine30", "refine_objective_after"] \
        < by.loc["BL-N+refine30", "refine_objective_before"]
    assert "| BL-N+refine30 |" in (out / "summary.md").read_text()
    capsys.readouterr()
    # --refine without models, or a bad list, is refused before any work
    assert main(["evaluate", "--pairs", str(tmp_path / "pairs"), "--baselines", "none",
                 "--refine", "10", "-o", str(tmp_path / "r2")]) == 2
    assert main([*argv[:-3], "--refine", "ten", "-o", str(tmp_path / "r3")]) == 2
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()
