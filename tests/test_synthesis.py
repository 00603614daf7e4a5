"""Training images drawn from label maps (issue 30): the synthesis itself, and training
steps that use it at the profile's odds."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ddmr.augment.synthesis import label_intensities, synthesise
from ddmr.data.datamodule import PreparedDataModule
from ddmr.designs import get_design
from ddmr.errors import ConfigError
from ddmr.train.module import RegistrationModule
from ddmr.train.run import data_summary
from train_helpers import make_dataset, tiny_profile


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("labelled"))


def _labels() -> torch.Tensor:
    """(1, 1, 32, 32, 32) uint8: background 0, a slab of label 1, a slab of label 5."""
    labels = torch.zeros((1, 1, 32, 32, 32), dtype=torch.uint8)
    labels[..., 4:14, :, :] = 1
    labels[..., 18:28, :, :] = 5
    return labels


def test_label_intensities_cover_the_values_given():
    table = label_intensities([0, 2, 5], torch.Generator().manual_seed(0))
    assert table.shape == (6,)
    assert table[[1, 3, 4]].eq(0).all()
    assert ((table[[0, 2, 5]] >= 0) & (table[[0, 2, 5]] <= 1)).all()


def test_each_label_takes_its_intensity():
    labels = _labels()
    table = torch.tensor([0.5, 0.1, 0.0, 0.0, 0.0, 0.9])
    image = synthesise(labels, table, torch.Generator().manual_seed(1))
    assert image.shape == labels.shape and image.dtype == torch.float32
    assert float(image.min()) == 0.0 and float(image.max()) == pytest.approx(1.0)
    inner = (slice(None), slice(None), slice(None), slice(6, 26), slice(6, 26))
    mean = {value: float(image[inner][labels[inner] == value].mean()) for value in (0, 1, 5)}
    assert mean[1] < mean[0] < mean[5]  # the table's order survives noise, blur and bias


def test_the_same_draws_give_the_same_image_and_others_differ():
    labels, table = _labels(), torch.tensor([0.5, 0.1, 0.0, 0.0, 0.0, 0.9])
    one = synthesise(labels, table, torch.Generator().manual_seed(3))
    assert torch.equal(one, synthesise(labels, table, torch.Generator().manual_seed(3)))
    assert not torch.equal(one, synthesise(labels, table, torch.Generator().manual_seed(4)))


def test_labels_beyond_the_table_are_refused():
    with pytest.raises(ValueError, match="intensity table"):
        synthesise(_labels(), torch.zeros(3), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="integer"):
        synthesise(_labels().float(), torch.zeros(6), torch.Generator().manual_seed(0))


def _module(data, **profile):
    module = RegistrationModule(get_design("SG-ND").to_dict(),
                                tiny_profile(**profile).to_dict(),
                                data_summary(data)["label_values"])
    datamodule = PreparedDataModule(data)
    datamodule.setup()
    module._trainer = SimpleNamespace(datamodule=datamodule)
    return module, datamodule


def _batch(datamodule, index=0):
    from torch.utils.data import default_collate

    return default_collate([datamodule.datasets["train"][index]])


def test_a_synthetic_step_draws_both_images_from_the_labels_with_one_table(labelled):
    module, datamodule = _module(labelled, pairing="inter-subject", prealign=False,
                                 synthesis=1.0)
    batch = _batch(datamodule)
    pair = module.make_pair(batch, torch.Generator().manual_seed(5))
    # the same draws by hand: the odds, one table, the subject's synthetic image and pair,
    # a partner, its synthetic image (same table) and pair
    generator = torch.Generator().manual_seed(5)
    torch.rand(1, generator=generator)
    table = label_intensities(module.label_values, generator)
    own = module.augment_pair({**batch, "image": synthesise(batch["labels"], table, generator)},
                              generator)
    partner = module._partner(batch, generator)
    theirs = module.augment_pair(
        {**partner, "image": synthesise(partner["labels"], table, generator)}, generator)
    assert torch.equal(pair.fixed, own.fixed) and torch.equal(pair.moving, theirs.moving)
    real = module.augment_pair(batch, torch.Generator().manual_seed(5))
    assert not torch.allclose(pair.fixed, real.fixed, atol=0.05)
    total, _, _ = module.pair_loss(pair)
    assert torch.isfinite(total)


def test_synthesis_odds_are_checked_and_need_labels(labelled, tmp_path):
    with pytest.raises(ConfigError, match="synthesis"):
        tiny_profile(synthesis=1.5)
    unlabelled = make_dataset(tmp_path, n=3, labels=False)
    with pytest.raises(ConfigError, match="label maps"):
        RegistrationModule(get_design("BL-N").to_dict(), tiny_profile(synthesis=0.5).to_dict(),
                           data_summary(unlabelled)["label_values"])
