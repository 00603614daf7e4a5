"""The model's space: the fixed image reaches the network exactly as ``ddmr prepare`` and
the training preprocessing would have put it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from ddmr.data.adapters import Source
from ddmr.errors import ConfigError, InputError
from ddmr.io.images import load_image, save_image, save_labels
from ddmr.model.card import ModelCard
from ddmr.prepare.dataset import prepare_subject
from ddmr.prepare.recipe import PrepareOptions, preprocess
from ddmr.registration.space import model_space, to_model_space
from register_helpers import oblique_fixed, other_moving, sample_scene


def _card(**options) -> ModelCard:
    base = {"size": [40, 40, 40], "spacing": 1.5, "resize": "fit"}
    base.update(options)
    return ModelCard({"input_size": [24, 24, 24],
                      "preparation": json.dumps({"format": "ddmr-prepared", "options": base})})


@pytest.mark.parametrize("options", [{}, {"resize": "scale"}, {"ct_window": [10.0, 60.0]}])
def test_fixed_image_matches_prepare_then_preprocess(tmp_path, options):
    save_image(tmp_path / "fixed.nii.gz", sample_scene(oblique_fixed()), oblique_fixed())
    image, geometry = load_image(tmp_path / "fixed.nii.gz")  # float32 sform, as prepare
    card = _card(**options)
    recipe = card.preparation
    if recipe.resize == "fit":  # registration keeps the trained spacing (issue 24)
        recipe = dataclasses.replace(recipe, resize="pad")
    prepared = prepare_subject(Source("a", "a", tmp_path / "fixed.nii.gz"), recipe)
    expected, _, _ = preprocess(torch.from_numpy(prepared.image)[None, None],
                                prepared.geometry.spacing, (24, 24, 24))
    space = model_space(geometry, card)
    assert space.prepared.isclose(prepared.geometry, 1e-9)
    ours = to_model_space(image, geometry, space, "fixed")
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


def test_model_grid_keeps_the_prepared_corners():
    space = model_space(oblique_fixed(), _card())
    first = space.grid.index_to_world(np.zeros(3))
    last = space.grid.index_to_world(np.asarray(space.grid.shape) - 1.0)
    np.testing.assert_allclose(first, space.prepared.index_to_world(np.zeros(3)))
    np.testing.assert_allclose(last, space.prepared.index_to_world(
        np.asarray(space.prepared.shape) - 1.0))
    assert space.grid.shape == (24, 24, 24)


def test_crop_labels_use_the_fixed_label_map(tmp_path):
    save_image(tmp_path / "f.nii.gz", sample_scene(oblique_fixed()), oblique_fixed())
    _, geometry = load_image(tmp_path / "f.nii.gz")
    labels = sample_scene(geometry, labels=True)
    card = _card(crop_labels=[2], crop_margin=2.0, spacing=0.5)
    whole = model_space(geometry, card)
    cropped = model_space(geometry, card, labels)
    # both at the trained voxel size; the crop's grid is centred on the label's box
    assert cropped.prepared.spacing == whole.prepared.spacing
    centre = geometry.index_to_world(np.argwhere(labels == 2).mean(axis=0))
    middle = cropped.prepared.index_to_world((np.asarray(cropped.prepared.shape) - 1) / 2)
    assert np.linalg.norm(middle - centre) < np.linalg.norm(
        whole.prepared.index_to_world((np.asarray(whole.prepared.shape) - 1) / 2) - centre)
    save_labels(tmp_path / "l.nii.gz", labels, geometry)
    prepared = prepare_subject(Source("a", "a", tmp_path / "f.nii.gz", tmp_path / "l.nii.gz"),
                               dataclasses.replace(card.preparation, resize="pad"))
    assert cropped.prepared.isclose(prepared.geometry, 1e-9)


def test_cards_without_or_with_bad_preparation():
    assert ModelCard({"input_size": [16, 16, 16]}).preparation == PrepareOptions(size=(16, 16, 16))
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelCard({"input_size": [16] * 3, "preparation": "{oops"}).preparation  # noqa: B018
    with pytest.raises(ConfigError, match="input_size"):
        ModelCard({}).preparation  # noqa: B018


def test_moving_outside_the_fixed_field_of_view_is_refused():
    fixed_geometry, moving_geometry = oblique_fixed(), other_moving()
    far = moving_geometry.affine.copy()
    far[:3, 3] += 500.0
    from ddmr.spatial.grid import Geometry

    moved = Geometry(far, moving_geometry.shape)
    space = model_space(fixed_geometry, _card())
    with pytest.raises(InputError, match=r"moving\.nii\.gz: image is constant inside"):
        to_model_space(sample_scene(moved), moved, space, "moving.nii.gz")


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 2.0, 2.0), (0.9, 0.9, 4.0)])
def test_the_network_sees_its_trained_spacing_whatever_the_field_of_view(spacing):
    """Issue 24: 1 mm, 2 mm and anisotropic fixed images of different fields of view all
    reach the network at the voxel size its training data had (the card's 1.5 mm prepared
    grid resized 40 -> 24), the field of view cropped or padded, and recorded."""
    from register_helpers import grid

    card = _card()  # trained on 40^3 voxels of 1.5 mm
    trained = 1.5 * 39 / 23
    for shape in ((60, 70, 50), (200, 220, 40), (30, 30, 30)):
        geometry = grid(shape, spacing, np.eye(3), (5.0, -3.0, 2.0))
        space = model_space(geometry, card)
        np.testing.assert_allclose(space.grid.spacing, trained, rtol=1e-9)
        coverage = space.coverage
        extent = np.asarray(shape) * np.asarray(spacing)
        np.testing.assert_allclose(coverage["box_mm"], extent, atol=0.01)
        np.testing.assert_allclose(np.asarray(coverage["cropped_mm"])
                                   - np.asarray(coverage["padded_mm"]), extent - 60.0,
                                   atol=0.02)
