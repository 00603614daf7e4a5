"""Issue 19, model files: the card is checked against the weights before anything is
built (defect 6); a checksum covers every card field (7), the shipped model included,
whose weights stayed byte for byte; bad card fields are one line (9); run folders and
shipped names are models everywhere (16)."""

from __future__ import annotations

import json
import resource
import struct
import time
from pathlib import Path

import pytest

from bad_input_cases import forged_card
from ddmr.cli import main
from ddmr.errors import InputError
from ddmr.model.file import CARD_CHECKSUM, FORMAT_VERSION, card_checksum, load_model
from ddmr.model.shipped import default_model, resolve_model
from register_helpers import save_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny.safetensors")


@pytest.mark.parametrize(("field", "change"), [
    ("input_size", lambda card: card.update(input_size=[48, 48, 48])),
    ("diffeomorphic", lambda card: card["architecture"].update(diffeomorphic=True)),
    ("match_histograms", lambda card: card["architecture"].update(match_histograms=True)),
    ("design name", lambda card: card["design"].update(name="UW-NSD")),
    ("label_values", lambda card: card.update(label_values=[0, 1])),
])
def test_a_card_changed_by_hand_is_refused(tiny, tmp_path, field, change):
    """Defect 7: these changes were accepted and changed the outputs."""
    changed = forged_card(tiny, tmp_path / "changed.safetensors", change, checksum=False)
    with pytest.raises(InputError, match="card checksum mismatch"):
        load_model(changed)


def test_a_card_claiming_a_huge_network_is_refused_without_building_it(tiny, tmp_path):
    """Defect 6: a 77 KB file whose card claims encoder [4096]*8 grew the process to
    18.8 GB. Now the weights' shapes are compared with the card's architecture on the
    meta device, before anything is allocated."""
    huge = forged_card(tiny, tmp_path / "huge.safetensors",
                       lambda card: card["architecture"].update(encoder=[4096] * 8))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(InputError, match=r"architecture does not match the weights.*differ"):
        load_model(huge)
    assert time.perf_counter() - started < 10
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, f"the process grew by {grown_mb:.0f} MB"


@pytest.mark.parametrize(("change", "problem"), [
    (lambda card: card.update(architecture="resnet"), "architecture 'resnet' is not a U-Net"),
    (lambda card: card.update(input_size=[0, 32, 32]), r"input_size \[0, 32, 32\]"),
    (lambda card: card["architecture"].update(encoder=[8, -4]), "encoder"),
    (lambda card: card["architecture"].update(flow_resolution="quarter"), "flow_resolution"),
    (lambda card: card["design"].update(losses=["nope"]), "design is not valid"),
    (lambda card: card.update(label_values=[0, 300]), "label_values"),
])
def test_bad_card_fields_are_one_error_naming_the_field(tiny, tmp_path, change, problem):
    """Defect 9 (with a valid checksum: the card says something impossible)."""
    forged = forged_card(tiny, tmp_path / "forged.safetensors", change)
    with pytest.raises(InputError, match=problem):
        load_model(forged)


def test_format_1_files_still_load_and_new_files_are_format_2(tiny, tmp_path):
    """A model written before the card checksum (format 1) loads as before; a new one is
    format 2 with the card's checksum in it."""
    card = json.loads((tiny.with_suffix(".json")).read_text())
    assert card["format_version"] == FORMAT_VERSION == 2
    assert card[CARD_CHECKSUM] == card_checksum(card)

    def as_format_1(card: dict) -> None:
        card["format_version"] = 1
        del card[CARD_CHECKSUM]

    old = forged_card(tiny, tmp_path / "old.safetensors", as_format_1, checksum=False)
    assert load_model(old).card["format_version"] == 1


#: the shipped model's weights as trained (its card's sha256 since v3) and the SHA-256 of
#: the tensor bytes of its file before the card was rewritten as format 2
SHIPPED_WEIGHTS_SHA256 = "ea0a051a7b271c31fc7aa2e0414f7e75d69dac3cdb01bbd135dd13406b319189"
SHIPPED_TENSOR_BYTES_SHA256 = "aaa157a3a67bc1a2f1a7e3650ab655a562a12ef3a2ecfc4ca4255395a64e8b40"


def test_the_shipped_model_is_format_2_with_its_weights_byte_identical(tmp_path):
    """The shipped card was rewritten (format 2, card_sha256) by changing the safetensors
    header only: the tensor bytes are those of the trained file, and a changed shipped
    card is refused."""
    import hashlib

    shipped = default_model()
    loaded = load_model(shipped.path)
    assert loaded.card["format_version"] == 2
    assert loaded.card["sha256"] == SHIPPED_WEIGHTS_SHA256
    raw = shipped.path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    assert hashlib.sha256(raw[8 + length:]).hexdigest() == SHIPPED_TENSOR_BYTES_SHA256
    assert json.loads(shipped.path.with_suffix(".json").read_text()) == loaded.card
    changed = forged_card(shipped.path, tmp_path / "changed.safetensors",
                          lambda card: card.update(input_size=[64, 64, 64]), checksum=False)
    with pytest.raises(InputError, match="card checksum mismatch"):
        load_model(changed)


def test_run_folders_and_shipped_names_are_models_everywhere(tiny, tmp_path, monkeypatch,
                                                            capsys):
    """Defect 16: ``--model run1`` (a run folder, no ./) was 'unknown'; ``evaluate
    --models brain-t1-cpu`` was 'not found'."""
    run = tmp_path / "run1"
    run.mkdir()
    (run / "model.safetensors").write_bytes(tiny.read_bytes())
    monkeypatch.chdir(tmp_path)
    assert resolve_model("run1") == ("model", Path("run1") / "model.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"is a directory without model\.safetensors"):
        resolve_model("empty")
    from ddmr.evaluate.runner import load_methods

    methods = load_methods(["run1", default_model().name])
    assert [m.path.name for m in methods] == ["model.safetensors",
                                              f"{default_model().name}.safetensors"]
    capsys.readouterr()
    assert main(["evaluate", "--stored-pairs", "absent", "--models", default_model().name,
                 "--baselines", "", "-o", "out"]) == 2  # the model is found, the pairs not
    assert "absent: no such folder" in capsys.readouterr().err


def test_evaluate_refuses_a_model_whose_field_is_not_finite(tmp_path, capsys):
    """Defect 3 (evaluate ended in an IndexError traceback): weights that are finite but
    overflow the network's activations give a NaN field; one line naming the model."""
    import torch

    from bad_input_cases import small_model
    from ddmr.augment import AugmentationConfig
    from ddmr.evaluate.pairs import make_pairs
    from ddmr.model.file import load_model as load
    from ddmr.model.file import save_model
    from train_helpers import make_dataset

    data = make_dataset(tmp_path / "data", n=5, size=16)
    make_pairs(data, tmp_path / "pairs", 1, 0, "test", AugmentationConfig(nonrigid=False),
               progress=False)
    loaded = load(small_model(tmp_path / "small.safetensors"))
    with torch.no_grad():
        for parameter in loaded.network.parameters():
            parameter.mul_(1e30)
    overflow = save_model(tmp_path / "overflow.safetensors", loaded.network,
                          dict(loaded.card))
    assert main(["evaluate", "--stored-pairs", str(tmp_path / "pairs"), "--models", str(overflow),
                 "--baselines", "none", "--no-progress", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"ddmr evaluate: error: {overflow}: the model predicted a field with NaN or Inf values "
        "on pair 0000; its results would be meaningless"]
    assert not (tmp_path / "out").exists()
