"""The training engine on tiny data: every design learns, errors are clear, checkpoints
round-trip, runs resume, two-step fine-tuning freezes then trains the encoder."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from ddmr.data.datamodule import PreparedDataModule
from ddmr.designs import DESIGNS, get_design
from ddmr.errors import ConfigError, InputError
from ddmr.model.file import load_model
from ddmr.train.finetune import finetune
from ddmr.train.module import RegistrationModule
from ddmr.train.run import RunOptions, data_summary, fit
from train_helpers import make_dataset, tiny_profile


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("labelled"))


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("unlabelled"), labels=False)


@pytest.mark.parametrize("name", list(DESIGNS))
def test_every_design_lowers_its_training_loss(name, labelled):
    """Ten optimiser steps of the module's training computation on one fixed pair (not
    pre-aligned: a pair that starts far from aligned, where lowering the loss means
    something; the pre-alignment has its own test below)."""
    design = get_design(name)
    profile = tiny_profile(prealign=False)
    module = RegistrationModule(design.to_dict(), profile.to_dict(),
                                data_summary(labelled)["label_values"])
    dm = PreparedDataModule(labelled, require_labels=True)
    batch = next(iter(dm.train_dataloader()))
    pair = module.make_pair(batch, torch.Generator().manual_seed(0))
    optimiser = torch.optim.Adam(module.parameters(), lr=profile.learning_rate)
    losses = []
    for _ in range(10):
        optimiser.zero_grad()
        total, _, _ = module.pair_loss(pair)
        total.backward()
        optimiser.step()
        losses.append(total.item())
    assert losses[-1] < losses[0], losses


def test_prealigned_pairs_leave_the_network_a_smaller_residual():
    """With ``prealign`` the moving image is aligned affinely first and the ground truth
    becomes the residual, much smaller than the full field inside the head (a bundled
    head: blobs are too symmetric to pin a rotation down); the supervised term is then
    the end-point error against that residual."""
    from ddmr.data.cohort import sample_cohort

    head = sample_cohort(["itk-kmeans"])[0]
    design = get_design("BL-N").replace(supervised_weight=1.0)
    profile = tiny_profile(input_size=(32, 32, 32))
    module = RegistrationModule(design.to_dict(), profile.to_dict(), list(range(17)))
    batch = {"image": torch.from_numpy(head.image)[None, None],
             "labels": torch.from_numpy(head.labels)[None, None],
             "spacing": torch.tensor([head.spacing])}
    raw = module.augment_pair(batch, torch.Generator().manual_seed(3))
    aligned = module.prealign(raw)
    brain = raw.fixed_labels[:, 0] > 0
    assert (aligned.displacement.norm(dim=1)[brain].mean()
            < 0.3 * raw.displacement.norm(dim=1)[brain].mean())
    assert torch.equal(aligned.fixed, raw.fixed)
    _, terms, displacement = module.pair_loss(aligned)
    scale = torch.tensor(aligned.spacing).view(1, 3, 1, 1, 1)
    expected = ((displacement - aligned.displacement) * scale).square().sum(dim=1).mean()
    assert torch.allclose(terms["field"], expected)


@pytest.mark.parametrize("name", ["SG-ND", "UW-NSD", "UW-NSDH"])
def test_segmentation_designs_refuse_unlabelled_data(name, unlabelled, tmp_path):
    with pytest.raises(InputError, match="no label maps"):
        fit(get_design(name), tiny_profile(), unlabelled, RunOptions(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_model_file_and_checkpoint_round_trip(labelled, tmp_path):
    rundir = tmp_path / "run"
    model = fit(get_design("BL-N"), tiny_profile(), labelled,
                RunOptions(rundir, progress_bar=False, command="ddmr train test"))
    card = json.loads((rundir / "model.json").read_text())
    assert card["design"]["name"] == "BL-N" and card["command"] == "ddmr train test"
    assert card["input_size"] == [24, 24, 24] and card["training"]["steps"] == 4
    loaded = load_model(model)
    x = torch.rand(1, 1, 24, 24, 24)
    ckpt = torch.load(rundir / "checkpoints" / "best.ckpt", weights_only=True)
    module = RegistrationModule(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    with torch.no_grad():
        assert torch.equal(loaded.network(x, x), module.network.eval()(x, x))
    for plot in ("training_loss.png", "loss_terms.png", "validation.png", "weights.png"):
        assert (rundir / "plots" / plot).stat().st_size > 1000


def test_export_writes_the_model_fit_writes_from_any_checkpoint(labelled, tmp_path):
    from ddmr.cli import main as cli

    rundir = tmp_path / "run"
    model = fit(get_design("BL-N"), tiny_profile(), labelled,
                RunOptions(rundir, progress_bar=False, command="ddmr train test"))
    record = json.loads((rundir / "run.json").read_text())
    assert record["command"] == "ddmr train test"
    assert cli(["export", str(rundir), "-o", str(tmp_path / "best.safetensors")]) == 0
    assert cli(["export", str(rundir), "--checkpoint", "last",
                "-o", str(tmp_path / "last.safetensors")]) == 0
    fitted, best = load_model(model), load_model(tmp_path / "best.safetensors")
    for key in ("design", "profile", "input_size", "preparation", "label_values", "command"):
        assert best.card[key] == fitted.card[key]
    assert best.card["sha256"] == fitted.card["sha256"]  # the same weights
    last = torch.load(rundir / "checkpoints" / "last.ckpt", weights_only=True)
    exported_last = load_model(tmp_path / "last.safetensors")
    assert exported_last.card["training"]["steps"] == last["global_step"]
    assert exported_last.card["validation"]["best_val_loss"] is None  # not the best's score
    for name, value in exported_last.network.state_dict().items():
        assert torch.equal(value, last["state_dict"][f"network.{name}"])
    # refusals: existing output, a folder that is not a run, a run without its record
    assert cli(["export", str(rundir), "-o", str(tmp_path / "best.safetensors")]) == 2
    assert cli(["export", str(tmp_path)]) == 2
    (rundir / "run.json").unlink()
    assert cli(["export", str(rundir), "-o", str(tmp_path / "x.safetensors")]) == 2
    assert not (tmp_path / "x.safetensors").exists()
    assert cli(["export", str(rundir), "--data", str(labelled),
                "-o", str(tmp_path / "x.safetensors")]) == 0


def test_resume_continues_the_step_count(labelled, tmp_path):
    rundir = tmp_path / "run"
    fit(get_design("BL-N"), tiny_profile(max_steps=3), labelled,
        RunOptions(rundir, progress_bar=False))
    with pytest.raises(InputError, match="exists"):
        fit(get_design("BL-N"), tiny_profile(max_steps=3), labelled, RunOptions(rundir))
    fit(get_design("BL-N"), tiny_profile(max_steps=5), labelled,
        RunOptions(rundir, resume=True, progress_bar=False))
    card = json.loads((rundir / "model.json").read_text())
    assert card["training"]["steps"] == 5
    segments = sorted(p.name for p in (rundir / "logs").iterdir())
    assert segments == ["run00", "run01"]
    import pandas as pd

    steps = pd.read_csv(rundir / "logs" / "run01" / "metrics.csv")["step"].dropna()
    assert steps.min() >= 3


def test_learning_rate_drops_once_at_its_step_and_not_again_on_resume(labelled, tmp_path):
    rundir = tmp_path / "run"
    profile = tiny_profile(max_steps=2, lr_drop_steps=[2], plateau_patience=100,
                           learning_rate=1e-3)
    fit(get_design("BL-N"), profile, labelled, RunOptions(rundir, progress_bar=False))

    def rate() -> float:
        last = torch.load(rundir / "checkpoints" / "last.ckpt", weights_only=True)
        return last["optimizer_states"][0]["param_groups"][0]["lr"]

    assert rate() == pytest.approx(1e-3)  # steps 1-2 at 1e-3
    for steps in (3, 5):  # resumed at the drop, then past it: one drop in all
        fit(get_design("BL-N"), profile.replace(max_steps=steps), labelled,
            RunOptions(rundir, resume=True, progress_bar=False))
        assert rate() == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="lr_drop_steps"):
        tiny_profile(lr_drop_steps=[0])


class _EncoderSnapshots(L.Callback):
    def __init__(self) -> None:
        self.snapshots: dict[int, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        weights = torch.cat([p.detach().flatten().clone() for m in
                             pl_module.network.layer_groups()["encoder"] for p in m.parameters()])
        self.snapshots[trainer.global_step] = weights


def test_two_step_finetuning_freezes_then_trains_the_encoder(labelled, tmp_path):
    source = fit(get_design("BL-N"), tiny_profile(max_steps=2), labelled,
                 RunOptions(tmp_path / "source", progress_bar=False))
    start = torch.cat([p.flatten() for m in load_model(source).network.layer_groups()["encoder"]
                       for p in m.parameters()])
    recorder = _EncoderSnapshots()
    model = finetune(source, labelled, RunOptions(tmp_path / "ft", progress_bar=False),
                     strategy="two-step", frozen_steps=3, overrides={"max_steps": 6},
                     extra_callbacks=[recorder])
    assert torch.equal(recorder.snapshots[3], start)  # step one: encoder unchanged
    assert not torch.equal(recorder.snapshots[6], start)  # step two: encoder trained
    card = load_model(model).card
    assert card["finetune"] == {"mode": "two-step", "frozen_steps": 3,
                                "frozen_groups": ["input", "encoder"]}
    assert card["profile"]["learning_rate"] == pytest.approx(1e-4)


def test_same_seed_repeats_the_run_on_cpu(labelled, tmp_path):
    cards = []
    for name in ("a", "b"):
        model = fit(get_design("UW-NSD"), tiny_profile(max_steps=2, seed=3), labelled,
                    RunOptions(tmp_path / name, progress_bar=False))
        cards.append(load_model(model).card)
    assert cards[0]["sha256"] == cards[1]["sha256"]
