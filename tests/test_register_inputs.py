"""The frictions a first-time user met (issue 18): images as nibabel/SimpleITK objects or
arrays with an affine, label maps given as images, one label map only, option help,
the overlay figure, and a README that points only inside the repository."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest

import ddmr
from ddmr.errors import InputError
from ddmr.io.convert import to_sitk
from ddmr.io.images import save_image, save_labels
from register_helpers import oblique_fixed, other_moving, sample_scene, save_tiny_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    fixed_geometry, moving_geometry = oblique_fixed(), other_moving()
    save_image(folder / "fixed.nii.gz", sample_scene(fixed_geometry, sharp=True),
               fixed_geometry)
    save_image(folder / "moving.nii.gz", sample_scene(moving_geometry, (2.0, -3.0, 1.5),
                                                      sharp=True), moving_geometry)
    save_labels(folder / "fixed_seg.nii.gz", sample_scene(fixed_geometry, labels=True),
                fixed_geometry)
    save_labels(folder / "moving_seg.nii.gz",
                sample_scene(moving_geometry, (2.0, -3.0, 1.5), labels=True), moving_geometry)
    save_tiny_model(folder / "model.safetensors", bias=(1.0, 0.5, -0.5))
    return folder


def test_nibabel_simpleitk_and_array_affine_inputs_equal_the_files(files):
    import nibabel as nib

    from ddmr.io.images import load_image

    model = files / "model.safetensors"
    by_path = ddmr.register(files / "fixed.nii.gz", files / "moving.nii.gz", model=model)
    array, geometry = load_image(files / "moving.nii.gz")
    for moving in (nib.load(files / "moving.nii.gz"), to_sitk(array, geometry),
                   (array, geometry.affine)):
        result = ddmr.register(nib.load(files / "fixed.nii.gz"), moving, model=model)
        np.testing.assert_allclose(result.warped, by_path.warped, atol=1e-4)
    with pytest.raises(InputError, match="expected a file path, a nibabel or SimpleITK"):
        ddmr.register([1, 2, 3], files / "moving.nii.gz", model=model)
    with pytest.raises(InputError, match="4x4 affine"):
        ddmr.register((array, np.eye(3)), files / "moving.nii.gz", model=model)


def test_a_label_map_given_as_the_image_is_warned_about(files, caplog):
    with caplog.at_level(logging.WARNING):
        ddmr.register(files / "fixed_seg.nii.gz", files / "moving.nii.gz",
                      model=files / "model.safetensors", affine=False)
    assert any("is it a label map?" in r.getMessage() and "fixed" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("given", ["fixed", "moving"])
def test_one_label_map_says_what_is_not_computed(files, caplog, given):
    with caplog.at_level(logging.WARNING):
        result = ddmr.register(files / "fixed.nii.gz", files / "moving.nii.gz",
                               model=files / "model.safetensors", affine=False,
                               **{f"{given}_labels": files / f"{given}_seg.nii.gz"})
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "DSC/HD95/TRE" in messages
    assert result.summary["metrics"].get("dsc") is None
    assert (result.warped_seg is not None) == (given == "moving")


def test_every_register_option_states_its_default():
    import argparse

    from ddmr.cli import build_parser

    parser = build_parser()
    command = parser._subparsers._group_actions[0].choices["register"]
    for action in command._actions:
        if not action.option_strings or action.dest in ("help", "output"):
            continue
        if action.help == argparse.SUPPRESS:  # an old spelling, hidden (test_vocabulary.py)
            continue
        text = action.help or ""
        assert "default" in text or "required" in text, f"{action.option_strings}: {text}"


def test_overlay_is_wide_with_its_legend_inside(files, tmp_path):
    from PIL import Image

    result = ddmr.register(files / "fixed.nii.gz", files / "moving.nii.gz",
                           model=files / "model.safetensors")
    result.save(tmp_path / "out")
    image = np.asarray(Image.open(tmp_path / "out" / "overlay.png").convert("RGB"))
    assert image.shape[1] >= 1200
    # the det J colour bar: pure-ish blue at its left end and red at its right end, both
    # inside the canvas, with white margin to the right and below (nothing cut)
    bluish = (image[..., 2] > 200) & (image[..., 0] < 120)
    reddish = (image[..., 0] > 200) & (image[..., 2] < 120)
    rows = np.nonzero(bluish.any(axis=1) & reddish.any(axis=1))[0]
    assert rows.size and rows.max() < image.shape[0] - 20
    assert np.nonzero(reddish[rows.max()])[0].max() < image.shape[1] - 2


def test_readme_links_only_inside_the_repository():
    text = (REPO / "README.md").read_text()
    targets = re.findall(r"\]\(([^)]+)\)", text)
    assert "../" not in text
    for target in targets:
        assert not re.match(r"[a-z]+://", target), f"external link {target}"
        assert (REPO / target.split("#")[0]).exists(), f"README links missing {target}"
