"""The shipped brain model: listed, verified on load, described by its card, and it
recovers a known synthetic deformation of a held-out bundled head through ``register``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddmr import register
from ddmr.augment import AugmentationConfig, AugmentationLayer
from ddmr.cli import main
from ddmr.data.cohort import cohort_split, sample_cohort
from ddmr.model.file import load_model
from ddmr.model.shipped import default_model, shipped_models
from ddmr.registration.scores import label_metrics
from ddmr.spatial.grid import Geometry


@pytest.fixture(scope="module")
def shipped():
    models = shipped_models()
    assert models, "no model ships in src/ddmr/models"
    return default_model()


def test_the_card_says_how_it_was_made_and_how_well_it_does(shipped):
    card = shipped.card()
    assert "ddmr train" in card["command"]
    assert card["data"] and card["preparation"]
    assert card["training"]["training_hours_total"] > 0
    scores = card["evaluation"]["methods"]
    model = card["design"]["name"]
    assert {"none", "affine", model} <= set(scores)
    assert scores[model]["dsc"] > scores["none"]["dsc"]
    assert card["learning_curve"], "the learning curve is part of the card"


def test_loads_with_its_checksum_verified(shipped, tmp_path):
    loaded = load_model(shipped.path)
    assert loaded.card["sha256"]
    tampered = tmp_path / "tampered.safetensors"
    data = bytearray(shipped.path.read_bytes())
    data[-5] ^= 0xFF  # a weight byte at the end of the file
    tampered.write_bytes(bytes(data))
    with pytest.raises(Exception, match="checksum"):
        load_model(tampered)


def test_ddmr_models_lists_it(shipped, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert shipped.name in out
    # its scores between the two held-out people, beside the same-subject ones (issue 21)
    between = shipped.card().summary()["inter_subject"]
    assert {"network", "SyN", "none"} <= set(between)
    assert 0.5 < between["network"]["dsc"] <= 1.0
    assert "between     network" in out


def test_recovers_a_known_deformation_of_a_held_out_head(shipped):
    test_subject = cohort_split()["test"][-1]
    subject = sample_cohort([test_subject])[0]
    image = torch.from_numpy(subject.image)[None, None]
    labels = torch.from_numpy(subject.labels)[None, None]
    pair = AugmentationLayer(AugmentationConfig())(
        image, labels, subject.spacing, generator=torch.Generator().manual_seed(2024))
    geometry = Geometry(subject.affine, subject.image.shape)
    fixed = (pair.fixed[0, 0].numpy(), geometry)
    moving = (pair.moving[0, 0].numpy(), geometry)
    fixed_seg = (pair.fixed_labels[0, 0].numpy(), geometry)
    moving_seg = (pair.moving_labels[0, 0].numpy(), geometry)
    before = label_metrics(fixed_seg[0], moving_seg[0], geometry.spacing)
    result = register(fixed, moving, fixed_seg, moving_seg, model=shipped.name, engine=False)
    after = result.summary["metrics"]
    assert after["dsc"] > before["dsc"] + 0.3
    assert after["tre"] < 0.3 * before["tre"]
    assert after["folding_percent"] < 1.0
    assert np.isfinite(result.displacement_mm).all()
