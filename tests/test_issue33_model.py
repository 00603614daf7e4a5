"""Issue 33, models, threads and early checks: a model with NaN or Inf weights is refused
by ``register`` as by ``evaluate`` and ``finetune`` (item 15); ``--threads`` beyond a sane
count is refused instead of crashing the process (20); a card's ``input_size`` below what
its network takes is refused naming the field (22); a bad ``DDMR_MAX_IMAGE_MB`` is called
a bad setting, not a corrupt image (28); a refusal of a missing file or a bad card comes
before torch is imported (9)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bad_input_cases import blobs, forged_card, nonfinite_weights
from ddmr.cli import main
from ddmr.errors import ConfigError, InputError
from ddmr.io.images import save_image
from ddmr.spatial.grid import Geometry
from register_helpers import save_tiny_model


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Two 16^3 images of 2 mm voxels, the tiny model and its NaN and Inf copies."""
    root = tmp_path_factory.mktemp("issue33_model")
    geometry = Geometry(np.diag([2.0, 2.0, 2.0, 1.0]), (16, 16, 16))
    fixed, moving = root / "fixed.nii.gz", root / "moving.nii.gz"
    save_image(fixed, blobs(seed=0), geometry)
    save_image(moving, blobs(seed=1), geometry)
    tiny = save_tiny_model(root / "tiny.safetensors")
    return {"fixed": fixed, "moving": moving, "tiny": tiny,
            "nan": nonfinite_weights(tiny, root / "nan.safetensors", float("nan")),
            "inf": nonfinite_weights(tiny, root / "inf.safetensors", float("inf"))}


def one_error_line(err: str, command: str = "register") -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ddmr {command}: error: ") and "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------ item 15


@pytest.mark.parametrize("kind", ["nan", "inf"])
@pytest.mark.parametrize("fast", [False, True], ids=["engine", "fast"])
def test_register_refuses_a_model_with_nan_or_inf_weights(files, tmp_path, capsys, kind,
                                                         fast):
    """It was bypassed silently: exit 0, QC pass, credited as 'model nan + engine'; with
    --fast numpy warnings and 'folding 0.000 %'. Now the load refuses it, as evaluate's
    and finetune's did, before an image is read."""
    out = tmp_path / "out"
    argv = ["register", "--fixed", str(files["fixed"]), "--moving", str(files["moving"]),
            "--model", str(files[kind]), "-o", str(out)] + (["--fast"] if fast else [])
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert one_error_line(captured.err) == (
        f"ddmr register: error: {files[kind]}: the weights have NaN or Inf values (1 of 12 "
        "tensors, e.g. output.weight): the training diverged; this model cannot be used")
    assert captured.out == ""
    assert not out.exists()


def test_the_python_api_refuses_nan_weights_as_a_file_or_a_loaded_model(files):
    import torch

    import ddmr
    from ddmr.model.file import load_model

    with pytest.raises(InputError, match="weights have NaN or Inf values"):
        ddmr.register(str(files["fixed"]), str(files["moving"]), model=files["nan"])
    loaded = load_model(files["tiny"])
    with torch.no_grad():
        loaded.network.output.bias.fill_(float("inf"))
    with pytest.raises(InputError, match="weights have NaN or Inf values"):
        ddmr.register(str(files["fixed"]), str(files["moving"]), model=loaded)


# ------------------------------------------------------------------ item 20


def test_thread_counts_beyond_the_limit_are_refused_without_torch(monkeypatch):
    from ddmr import threads

    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    assert threads.max_threads() == 2 * threads.THREADS_PER_CPU
    assert threads.check_threads(threads.max_threads()) == threads.max_threads()
    with pytest.raises(ConfigError, match=r"--threads 9: more than 8 \(4 per logical CPU of "
                                          r"this machine, which has 2\)"):
        threads.check_threads(9)


def test_register_threads_100000_is_one_line_not_a_segfault(files, tmp_path):
    """It crashed with exit 139 (OpenMP), nothing printed."""
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "ddmr", "register", "--fixed", str(files["fixed"]), "--moving",
         str(files["moving"]), "--model", str(files["tiny"]), "--threads", "100000", "-o",
         str(out)], capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    line = one_error_line(done.stderr)
    assert line.startswith("ddmr register: error: --threads 100000: more than ")
    assert not out.exists()


# ------------------------------------------------------------------ item 22


def test_a_card_input_size_below_the_networks_levels_is_refused(files, tmp_path, capsys):
    """input_size 2 passed the checks, then crashed in model/align.py (the shipped
    model's own affine stage) or ran on a grid of padding."""
    from ddmr.model.file import load_model

    small = forged_card(files["tiny"], tmp_path / "small.safetensors",
                        lambda card: card.update(input_size=[2, 2, 2]))
    with pytest.raises(InputError, match=r"input_size \[2, 2, 2\] is too small for its "
                                         r"network \(2 encoder levels, each halving the "
                                         r"grid\): each size must be at least 4"):
        load_model(small)
    out = tmp_path / "out"
    assert main(["register", "--fixed", str(files["fixed"]), "--moving",
                 str(files["moving"]), "--model", str(small), "-o", str(out)]) == 2
    assert f"{small}: the card's input_size [2, 2, 2] is too small" in \
        one_error_line(capsys.readouterr().err)
    assert not out.exists()
    unpadded = forged_card(files["tiny"], tmp_path / "unpadded.safetensors", lambda card: (
        card["architecture"].update(pad_input=False), card.update(input_size=[30, 32, 32])))
    with pytest.raises(InputError, match=r"input_size \[30, 32, 32\] is not a multiple of 4 "
                                         r".*pad_input false"):
        load_model(unpadded)


def test_the_shipped_model_and_its_own_affine_stage_set_the_smallest_size():
    from ddmr.model.file import check_card, check_input_size, read_card, smallest_input_size
    from ddmr.model.shipped import default_model
    from ddmr.nn import UNetConfig

    assert smallest_input_size(UNetConfig(encoder=(4,)), prealigns=False) == 2
    assert smallest_input_size(UNetConfig(encoder=(4,)), prealigns=True) == 4  # (4, 2)
    shipped = read_card(default_model().path)
    config = check_card(shipped, default_model().path)
    check_input_size(shipped, config, default_model().path)  # 48^3, 4 levels: accepted
    assert smallest_input_size(config, prealigns=True) == 16 <= min(shipped["input_size"])
    shipped["input_size"] = [8, 48, 48]
    with pytest.raises(InputError, match=r"input_size \[8, 48, 48\] is too small.*at least 16"):
        check_input_size(shipped, config, "shipped")


# ------------------------------------------------------------------ item 28


@pytest.mark.parametrize("value", ["abc", "-1", "0", "nan"])
def test_a_bad_memory_budget_variable_is_named_not_called_a_corrupt_image(
        files, tmp_path, capsys, monkeypatch, value):
    from ddmr.io.images import load_image

    monkeypatch.setenv("DDMR_MAX_IMAGE_MB", value)
    with pytest.raises(ConfigError, match="DDMR_MAX_IMAGE_MB"):
        load_image(files["fixed"])
    out = tmp_path / "out"
    assert main(["register", "--fixed", str(files["fixed"]), "--moving",
                 str(files["moving"]), "--model", str(files["tiny"]), "-o", str(out)]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"ddmr register: error: DDMR_MAX_IMAGE_MB={value!r}: expected a positive number of "
        "MB")
    assert not out.exists()


# ------------------------------------------------------------------ item 9

#: run ddmr register in a fresh interpreter; print its status and whether torch loaded
FRESH = textwrap.dedent("""
    import sys
    from ddmr.cli import main
    status = main(sys.argv[1:])
    print(status, "torch" in sys.modules)
""")


@pytest.mark.parametrize("bad", ["missing fixed", "missing moving", "missing label map",
                                 "corrupt image", "missing model", "bad card",
                                 "threads"])
def test_a_refusal_of_a_bad_input_imports_no_torch(files, tmp_path, bad):
    """A refusal took 4.8 s: torch and the numeric modules were imported (``use_threads``
    and the pipeline) before the first input was looked at. Now the model card and the
    image headers are checked first (a card's fields other than its checksum, and the
    voxels, are checked once torch is loaded)."""
    absent = str(tmp_path / "absent.nii.gz")
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not an image\n" * 40)
    fixed, moving, model = str(files["fixed"]), str(files["moving"]), str(files["tiny"])
    extra: list[str] = []
    named = {"missing fixed": absent, "missing moving": absent,
             "missing label map": absent, "corrupt image": str(garbage),
             "missing model": str(tmp_path / "absent.safetensors"),
             "bad card": str(tmp_path / "forged.safetensors"), "threads": "--threads"}[bad]
    if bad == "missing fixed":
        fixed = absent
    elif bad in ("missing moving", "corrupt image"):
        moving = named
    elif bad == "missing label map":
        extra = ["--fixed-labels", absent]
    elif bad == "missing model":
        model = named
    elif bad == "bad card":
        model = str(forged_card(files["tiny"], Path(named),  # changed by hand
                                lambda card: card.update(input_size=[2, 2, 2]),
                                checksum=False))
    else:
        extra = ["--threads", "100000"]
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", FRESH, "register", "--fixed", fixed, "--moving", moving,
         "--model", model, *extra, "-o", str(out)], capture_output=True, text=True,
        check=False, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.stdout.split() == ["2", "False"], (done.stdout, done.stderr[-2000:])
    assert named in one_error_line(done.stderr)
    assert not out.exists()
