"""Training on pairs of different subjects (issue 21.3): the moving image is another
training subject's, no term uses a field that is not known, runs fit end to end."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from ddmr.data.datamodule import PreparedDataModule
from ddmr.designs import get_design
from ddmr.errors import ConfigError
from ddmr.train.module import RegistrationModule, between_subjects
from ddmr.train.run import RunOptions, data_summary, fit
from train_helpers import make_dataset, tiny_profile


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("labelled"))


def _module(data, design="SG-ND", **profile):
    module = RegistrationModule(get_design(design).to_dict(), tiny_profile(**profile).to_dict(),
                                data_summary(data)["label_values"])
    datamodule = PreparedDataModule(data)
    datamodule.setup()
    module._trainer = SimpleNamespace(datamodule=datamodule)  # what fit() gives the module
    return module, datamodule


def _batch(datamodule, index=0):
    from torch.utils.data import default_collate

    return default_collate([datamodule.datasets["train"][index]])


def test_inter_subject_pairs_take_the_moving_image_from_another_subject(labelled):
    module, datamodule = _module(labelled, pairing="inter-subject", prealign=False)
    batch = _batch(datamodule)
    partners = set()
    for seed in range(6):
        pair = module.make_pair(batch, torch.Generator().manual_seed(seed))
        # the same draws by hand: the subject's own augmented pair, a partner, its pair
        generator = torch.Generator().manual_seed(seed)
        own = module.augment_pair(batch, generator)
        partner = module._partner(batch, generator)
        theirs = module.augment_pair(partner, generator)
        assert partner["id"][0] != batch["id"][0]
        partners.add(partner["id"][0])
        assert torch.equal(pair.fixed, own.fixed)
        assert torch.equal(pair.fixed_labels, own.fixed_labels)
        assert torch.equal(pair.moving, theirs.moving)
        assert torch.equal(pair.moving_labels, theirs.moving_labels)
        assert not torch.equal(pair.moving, own.moving)
        assert torch.isnan(pair.displacement).all()
    assert len(partners) > 1
    # the loss is finite and uses no known field
    total, terms, _ = module.pair_loss(pair)
    assert torch.isfinite(total) and "field" not in terms


def test_partners_are_never_the_subject_itself(labelled):
    module, datamodule = _module(labelled, pairing="inter-subject")
    train = datamodule.datasets["train"]
    for index in range(len(train)):
        batch = _batch(datamodule, index)
        for seed in range(8):
            partner = module._partner(batch, torch.Generator().manual_seed(seed))
            assert partner["id"][0] != batch["id"][0]
            assert partner["id"][0] in train.ids


def test_between_subjects_keeps_each_side_and_marks_the_field_unknown(labelled):
    module, datamodule = _module(labelled)
    a = module.augment_pair(_batch(datamodule, 0), torch.Generator().manual_seed(1))
    b = module.augment_pair(_batch(datamodule, 1), torch.Generator().manual_seed(2))
    pair = between_subjects(a, b)
    assert torch.equal(pair.fixed, a.fixed) and torch.equal(pair.moving, b.moving)
    assert torch.equal(pair.fixed_labels, a.fixed_labels)
    assert torch.equal(pair.moving_labels, b.moving_labels)
    assert torch.isnan(pair.displacement).all()
    assert torch.isnan(pair.generating_displacement).all()


def test_mixed_pairing_draws_both_kinds(labelled):
    module, datamodule = _module(labelled, pairing="mixed", prealign=False)
    batch = _batch(datamodule)
    kinds = [bool(torch.isnan(module.make_pair(batch, torch.Generator().manual_seed(s))
                              .displacement).all()) for s in range(16)]
    assert 3 <= sum(kinds) <= 13


def test_same_subject_pairing_is_the_paper_s_pair(labelled):
    module, datamodule = _module(labelled, prealign=False)
    batch = _batch(datamodule)
    pair = module.make_pair(batch, torch.Generator().manual_seed(3))
    expected = module.augment_pair(batch, torch.Generator().manual_seed(3))
    assert torch.equal(pair.moving, expected.moving)
    assert torch.isfinite(pair.displacement).all()


def test_supervised_term_refused_without_a_known_field(labelled):
    design = get_design("SG-ND").replace(supervised_weight=0.1)
    with pytest.raises(ConfigError, match="supervised"):
        RegistrationModule(design.to_dict(), tiny_profile(pairing="inter-subject").to_dict(),
                           data_summary(labelled)["label_values"])
    with pytest.raises(ConfigError, match="pairing"):
        tiny_profile(pairing="between")


def test_inter_subject_training_runs_and_the_card_says_so(labelled, tmp_path):
    rundir = tmp_path / "run"
    fit(get_design("SG-ND"), tiny_profile(max_steps=3, pairing="mixed"), labelled,
        RunOptions(rundir, progress_bar=False))
    card = json.loads((rundir / "model.json").read_text())
    assert card["profile"]["pairing"] == "mixed"
