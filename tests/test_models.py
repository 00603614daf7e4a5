"""The shipped-model registry and ``ddmr models``."""

from __future__ import annotations

from pathlib import Path

import pytest

import ddmr.model.shipped
from ddmr.cli import main
from ddmr.errors import ConfigError, InputError
from ddmr.model.card import ModelCard
from ddmr.model.shipped import default_model, resolve_model, shipped_models
from register_helpers import save_tiny_model


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """Pretend that a folder with two model files is the package's models folder."""
    folder = tmp_path / "models"
    save_tiny_model(folder / "zeta.safetensors")
    save_tiny_model(folder / "alpha.safetensors")
    monkeypatch.setattr(ddmr.model.shipped.resources, "files", lambda name: Path(folder))
    return folder


def test_shipped_models_are_listed_by_name(shipped):
    assert [m.name for m in shipped_models()] == ["alpha", "zeta"]
    assert default_model().name == "alpha"
    assert resolve_model(None) == ("alpha", shipped / "alpha.safetensors")
    assert resolve_model("zeta") == ("zeta", shipped / "zeta.safetensors")


def test_paths_resolve_and_unknown_names_list_what_exists(shipped, tmp_path):
    path = save_tiny_model(tmp_path / "mine.safetensors")
    assert resolve_model(str(path)) == ("mine", path)
    with pytest.raises(InputError, match="shipped models: alpha, zeta"):
        resolve_model("beta")
    with pytest.raises(InputError, match="model file not found"):
        resolve_model(tmp_path / "absent.safetensors")


def test_a_run_directory_resolves_to_its_model(tmp_path):
    path = save_tiny_model(tmp_path / "run" / "model.safetensors")
    assert resolve_model(str(tmp_path / "run")) == ("model", path)


def test_no_shipped_model_gives_clear_errors(monkeypatch, tmp_path):
    monkeypatch.setattr(ddmr.model.shipped.resources, "files", lambda name: Path(tmp_path))
    assert shipped_models() == []
    with pytest.raises(ConfigError, match="--model PATH"):
        resolve_model(None)
    with pytest.raises(InputError, match="none is shipped yet"):
        resolve_model("uw-nsd")


def test_models_command_without_models(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(ddmr.model.shipped.resources, "files", lambda name: Path(tmp_path))
    assert main(["models"]) == 0
    assert "No model is shipped" in capsys.readouterr().out


def test_models_command_shows_cards(shipped, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "alpha" in out and "zeta" in out
    assert "BL-N" in out and "32x32x32" in out and "ddmr train --design BL-N" in out


def test_card_summary_of_a_sparse_card():
    summary = ModelCard({"input_size": [8, 8, 8]}).summary()
    assert summary["design"] == "?" and summary["input_size"] == "8x8x8"
