"""Amortised optimisation (issue 30): the engine's fields between training subjects as the
supervised term's targets, carried through the moving subject's augmentation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from bad_input_cases import blobs
from ddmr.augment import AugmentationLayer
from ddmr.augment.config import AugmentationConfig
from ddmr.data.datamodule import PreparedDataModule
from ddmr.data.dataset import PreparedDataset
from ddmr.designs import get_design
from ddmr.errors import ConfigError
from ddmr.prepare.recipe import preprocess
from ddmr.spatial.warp import warp_image
from ddmr.train.engine_targets import engine_fields, through_augmentation
from ddmr.train.module import RegistrationModule
from ddmr.train.run import data_summary
from train_helpers import make_dataset, tiny_profile


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("labelled"))


def _smooth_field(shape, amplitude, seed):
    """(1, 3, *shape) voxels: a smooth random field (coarse noise, upsampled)."""
    coarse = torch.randn((1, 3, 4, 4, 4), generator=torch.Generator().manual_seed(seed))
    return amplitude * torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear",
                                                       align_corners=True)


def test_the_target_carries_the_field_through_the_moving_augmentation():
    shape = (32, 32, 32)
    second = torch.from_numpy(blobs(shape, 0))[None, None]
    field = _smooth_field(shape, 1.5, 1)
    first = warp_image(second, field)  # first(x) = second(x + field(x)) exactly
    config = AugmentationConfig(intensity=False, normalise=False, max_translation=3.0,
                                max_rotation=5.0, max_tps=2.0)
    augmented = AugmentationLayer(config)(second, spacing=(2.0, 2.0, 2.0),
                                          generator=torch.Generator().manual_seed(2))
    target = through_augmentation(field, augmented.displacement)
    inner = (..., slice(6, 26), slice(6, 26), slice(6, 26))

    def error(u):
        return float((warp_image(augmented.moving, u) - first)[inner].abs().mean())

    assert error(target) < 0.2 * error(field)
    assert error(target) < 0.01


def test_engine_fields_find_a_known_shift_in_voxels(labelled):
    dataset = PreparedDataset(labelled, "train")
    image, _, spacing = preprocess(dataset[0]["image"][None], dataset[0]["spacing"].tolist(),
                                   (24, 24, 24))
    shift = torch.zeros((1, 3, 24, 24, 24))
    shift[:, 0] = -1.5  # moved(y) = fixed(y - 1.5 e0): the pull-back field is +1.5 e0
    moved = warp_image(image, shift, padding="border")
    fields = engine_fields({"a": image[0, 0], "b": moved[0, 0]}, spacing)
    assert set(fields) == {("a", "b"), ("b", "a")}
    mask = image[0, 0] > 0.3
    along = fields["a", "b"][0][mask]
    assert float(along.median()) == pytest.approx(1.5, abs=0.4)
    assert float(fields["b", "a"][0][warp_image(image, shift)[0, 0] > 0.3].median()) \
        == pytest.approx(-1.5, abs=0.4)
    for axis in (1, 2):  # no shift across (the blobs leave it some play voxel by voxel)
        assert abs(float(fields["a", "b"][axis][mask].median())) < 0.4


def _module(data, **profile):
    design = get_design("SG-ND").replace(supervised_weight=0.1)
    module = RegistrationModule(design.to_dict(), tiny_profile(**profile).to_dict(),
                                data_summary(data)["label_values"])
    datamodule = PreparedDataModule(data)
    datamodule.setup()
    module._trainer = SimpleNamespace(datamodule=datamodule)
    return module, datamodule


def test_inter_subject_pairs_get_the_engine_target_and_the_supervised_term(labelled):
    from torch.utils.data import default_collate

    module, datamodule = _module(labelled, pairing="inter-subject", prealign=False,
                                 engine_targets=True)
    ids = datamodule.datasets["train"].ids
    module._engine_fields = {(f, m): _smooth_field((24, 24, 24), 1.0, 3)[0]
                             for f in ids for m in ids if f != m}
    batch = default_collate([datamodule.datasets["train"][0]])
    pair = module.make_pair(batch, torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(4)
    module.augment_pair(batch, generator)
    partner = module._partner(batch, generator)
    theirs = module.augment_pair(partner, generator)
    expected = through_augmentation(module._engine_fields[ids[0], partner["id"][0]][None],
                                    theirs.displacement)
    assert torch.allclose(pair.displacement, expected)
    _, terms, _ = module.pair_loss(pair)
    assert "field" in terms and torch.isfinite(terms["field"])


def test_engine_targets_need_pairs_between_subjects_and_a_weight(labelled):
    with pytest.raises(ConfigError, match="pairing"):
        tiny_profile(engine_targets=True)
    with pytest.raises(ConfigError, match="supervised weight"):
        RegistrationModule(get_design("SG-ND").to_dict(),
                           tiny_profile(pairing="inter-subject", engine_targets=True).to_dict(),
                           data_summary(labelled)["label_values"])
