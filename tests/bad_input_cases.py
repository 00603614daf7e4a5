"""The bad-input matrix of issue 10: which bad file each command is fed, and how to run a
case in-process (``run_case``) or, for the real stderr of a process, many cases in one
child process (``python tests/bad_input_cases.py CASES.json RESULTS.json``).

A case is ``(command, bad input)``; :func:`case_argv` turns it into the command line, the
environment it needs, the path its one-line message must name and a regular expression
of the problem the message must state. ``docs/reliability.md`` tables the same cases.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------- the bad files

#: bad image -> (file name in the workspace's files/ folder, expected problem regex)
IMAGE_CASES: dict[str, tuple[str, str]] = {
    "missing path": ("absent.nii.gz", "no such file|does not exist"),
    "directory for a file": ("folder.nii.gz", "is a directory"),
    "truncated .nii.gz": ("truncated.nii.gz", r"cannot read image \(truncated or corrupt"),
    "corrupt file (not gzip)": ("garbage.nii.gz", r"cannot read image \(truncated or corrupt"),
    "2D image": ("two_d.nii.gz", "expected a 3D volume"),
    "4D image": ("four_d.nii.gz", "expected a 3D volume"),
    "NaN voxels": ("nan.nii.gz", "NaN or Inf"),
    "Inf voxels": ("inf.nii.gz", "NaN or Inf"),
    "all-constant image": ("constant.nii.gz", "constant"),
    "zero spacing (pixdim)": ("zero_spacing.nii.gz", "spacing must be positive"),
    "negative spacing (pixdim)": ("negative_spacing.nii.gz", "spacing must be positive"),
    "unsupported extension": ("image.txt", "unsupported file type"),
    "too large for the memory budget": ("large.nii.gz", "memory budget.*DDMR_MAX_IMAGE_MB"),
    "float64 values beyond float32": ("huge_values.nii.gz", "values up to 1e\\+39, beyond float32"),
    ".mhd without its data file": ("no_data.mhd", "File cannot be read.*Cannot open data file"),
    "corrupt .mhd": ("garbage.mhd", "Unable to determine ImageIO reader"),
}

#: bad label map -> (file name, expected problem regex); the image beside it is good
LABEL_CASES: dict[str, tuple[str, str]] = {
    "image/label shape mismatch": ("small_seg.nii.gz", r"shape \(16, 16, 12\) differs"),
    "image/label affine mismatch": ("shifted_seg.nii.gz", "affine differs"),
    "non-integer labels": ("fractional_seg.nii.gz", "non-integer"),
    "more than 255 labels": ("many_seg.nii.gz", r"0\.\.255"),
    "negative labels": ("negative_seg.nii.gz", "negative"),
}

#: a budget (MB) that the 16^3 good images fit and the 40^3 "large" image does not
SMALL_BUDGET_MB = "0.1"

#: bad model file -> (path in the workspace, problem regex)
MODEL_CASES: dict[str, tuple[str, str]] = {
    "missing model file": ("absent.safetensors", "not found"),
    "directory for a model": ("model_folder", "not found|directory"),
    "truncated model file": ("truncated.safetensors", "not a readable safetensors"),
    "pickle instead of safetensors": ("model.pt", "not a readable safetensors"),
    "model weights changed (checksum)": ("tampered.safetensors", "checksum mismatch"),
    "model card changed (input_size)": ("card_changed.safetensors", "card checksum mismatch"),
    "card architecture 'resnet'": ("card_resnet.safetensors",
                                   "architecture 'resnet' is not a U-Net"),
    "card input_size [0, 32, 32]": ("card_zero_size.safetensors",
                                    r"input_size \[0, 32, 32\] is not three voxel counts"),
    "card claims encoder [4096]*8 (77 KB of weights)": (
        "card_huge.safetensors", "architecture does not match the weights"),
    "card input_size [2, 2, 2] (below the network's levels)": (
        "card_tiny_size.safetensors", r"input_size \[2, 2, 2\] is too small.*at least 4"),
    "NaN weights (checksums valid)": ("nan_weights.safetensors",
                                      "the weights have NaN or Inf values"),
    "Inf weights (checksums valid)": ("inf_weights.safetensors",
                                      "the weights have NaN or Inf values"),
}

#: bad model card for ddmr finetune (its training profile) -> (path, problem regex)
FINETUNE_CARD_CASES: dict[str, tuple[str, str]] = {
    "card profile input_size [0, 32, 32]": ("finetune_zero_size.safetensors",
                                            "profile is not valid.*input_size"),
}

#: bad prepared dataset (train, finetune, pairs) -> (path, problem regex)
DATA_CASES: dict[str, tuple[str, str]] = {
    "missing dataset": ("absent_data", "no such"),
    "image file for a dataset": ("files/good.nii.gz", "not a prepared dataset"),
    "truncated dataset.h5": ("data_truncated/dataset.h5", "cannot read.*truncated or corrupt"),
    "corrupt dataset.h5 (not HDF5)": ("data_garbage/dataset.h5",
                                      "cannot read.*truncated or corrupt"),
    "HDF5 that ddmr prepare did not write": ("data_foreign/dataset.h5",
                                             "not a prepared dataset"),
    "missing split.json": ("data_no_split/split.json", "no such file"),
    "split.json naming unknown ids": ("data_bad_split/split.json", "not in the dataset"),
}

#: bad pairs folder (evaluate) -> (path, problem regex)
PAIRS_CASES: dict[str, tuple[str, str]] = {
    "missing pairs folder": ("absent_pairs", "no such folder"),
    "file for a pairs folder": ("files/good.nii.gz", "not a folder"),
    "truncated pairs.h5": ("pairs_truncated/pairs.h5", "truncated or corrupt"),
    "corrupt pairs.json": ("pairs_bad_json/pairs.json", "cannot read"),
}

#: bad --config YAML (train) -> (path, problem regex)
CONFIG_CASES: dict[str, tuple[str, str]] = {
    "missing --config file": ("absent.yaml", "cannot read the configuration"),
    "invalid YAML": ("bad.yaml", "cannot read the configuration"),
    "YAML that is not a mapping": ("list.yaml", "must be a mapping"),
}

#: a bad place for the output (every command that writes one) -> (path under the
#: workspace, problem regex)
OUTPUT_CASES: dict[str, tuple[str, str]] = {
    "output below a file": ("files/good.nii.gz/out", "is a file, not a folder"),
}

# ----------------------------------------------------------------------- the matrix

#: commands that read NIfTI (or NRRD/MHA) images and label maps
IMAGE_COMMANDS = ("prepare", "augment", "register")

CASES: list[tuple[str, str]] = (
    [(command, bad) for command in IMAGE_COMMANDS for bad in {**IMAGE_CASES, **LABEL_CASES}]
    + [("prepare", "missing INPUT folder")]
    + [("register", bad) for bad in MODEL_CASES]
    + [("evaluate", bad) for bad in {**PAIRS_CASES, **MODEL_CASES}]
    + [("train", bad) for bad in {**DATA_CASES, **CONFIG_CASES}]
    + [("train", "--resume from a corrupt checkpoint")]
    + [("finetune", bad) for bad in {**MODEL_CASES, **FINETUNE_CARD_CASES}]
    + [("finetune", bad) for bad in ("truncated dataset.h5", "split.json naming unknown ids")]
    + [("pairs", bad) for bad in ("missing dataset", "truncated dataset.h5",
                                  "HDF5 that ddmr prepare did not write")]
    + [(command, bad) for bad in OUTPUT_CASES for command in
       ("prepare", "augment", "register", "pairs", "evaluate", "report", "train", "finetune")]
)


def writer_argv(root: Path, command: str) -> tuple[list[str], bool]:
    """A command line with good inputs for a command that writes an output, without its
    ``-o``, and whether that output is a file (else a folder)."""
    files = root / "files"
    argv = {
        "prepare": ["prepare", str(root / "dataset" / "raw"), "--size", "8", "--spacing", "4",
                    "--no-progress"],
        "augment": ["augment", str(files / "good.nii.gz"), "--no-nonrigid"],
        "register": ["register", "--fixed", str(files / "good.nii.gz"), "--moving",
                     str(files / "good.nii.gz"), "--model", str(root / "tiny.safetensors")],
        "pairs": ["pairs", "--data", str(root / "prep"), "--n", "1", "--no-tps"],
        "evaluate": ["evaluate", "--stored-pairs", str(root / "pairs"), "--models",
                     str(root / "evaluate.safetensors"), "--baselines", "none",
                     "--no-progress"],
        "report": ["report", str(root / "results"), "--overlay-pairs", "0"],
        "train": ["train", "--design", "BL-N", "--data", str(root / "prep"), "--config",
                  str(root / "tiny.yaml"), "--max-steps", "1", "--no-progress"],
        "finetune": ["finetune", "--from", str(root / "finetune.safetensors"), "--data",
                     str(root / "prep"), "--strategy", "full", "--max-steps", "1",
                     "--no-progress"],
        "demo": ["demo", "--quick"],
    }[command]
    return argv, command == "report"


@dataclass
class Argv:
    """One case ready to run: command line, extra environment, the path the message must
    name, the problem it must state, and a folder that must exist before the run (and be
    unchanged after it) instead of being absent."""

    argv: list[str]
    env: dict[str, str]
    names: str
    problem: str
    existing_output: bool = False


def case_argv(root: Path, command: str, bad: str, out: Path) -> Argv:
    """The command line of case ``(command, bad)`` with workspace ``root`` writing ``out``."""
    files = root / "files"
    good = str(files / "good.nii.gz")
    env: dict[str, str] = {}
    if bad in IMAGE_CASES or bad in LABEL_CASES:
        is_label = bad in LABEL_CASES
        name, problem = (LABEL_CASES if is_label else IMAGE_CASES)[bad]
        path = str(files / name)
        if bad == "too large for the memory budget":
            env["DDMR_MAX_IMAGE_MB"] = SMALL_BUDGET_MB
        image, labels = (good, path) if is_label else (path, None)
        if command == "prepare":
            manifest = root / "manifests" / f"{name}.csv"
            return Argv(["prepare", str(manifest), "--layout", "csv", "-o", str(out),
                         "--size", "8", "--spacing", "4", "--no-progress"], env, path, problem)
        if command == "augment":
            argv = ["augment", image, "-o", str(out), "--no-nonrigid"]
            return Argv(argv + (["--labels", labels] if labels else []), env, path, problem)
        if command == "register":
            argv = ["register", "--fixed", good, "--moving", image, "--model",
                    str(root / "tiny.safetensors"), "-o", str(out)]
            return Argv(argv + (["--moving-labels", labels] if labels else []), env, path,
                        problem)
    if command == "prepare" and bad == "missing INPUT folder":
        path = str(root / "absent_dataset")
        return Argv(["prepare", path, "-o", str(out), "--no-progress"], env, path,
                    "no such file or folder")
    if bad in MODEL_CASES or bad in FINETUNE_CARD_CASES:
        name, problem = {**MODEL_CASES, **FINETUNE_CARD_CASES}[bad]
        path = str(root / name)
        if command == "register":
            return Argv(["register", "--fixed", good, "--moving", good, "--model", path,
                         "-o", str(out)], env, path, problem)
        if command == "evaluate":
            return Argv(["evaluate", "--stored-pairs", str(root / "pairs"), "--models", path,
                         "--baselines", "none", "--no-progress", "-o", str(out)], env, path,
                        problem)
        if command == "finetune":
            return Argv(["finetune", "--from", path, "--data", str(root / "prep"),
                         "--strategy", "full", "--max-steps", "1", "--no-progress", "-o",
                         str(out)], env, path, problem)
    if bad in PAIRS_CASES:
        name, problem = PAIRS_CASES[bad]
        path = root / name
        folder = path.parent if path.name in ("pairs.h5", "pairs.json") else path
        return Argv(["evaluate", "--stored-pairs", str(folder), "--models",
                     str(root / "evaluate.safetensors"), "--baselines", "none",
                     "--no-progress", "-o", str(out)], env, str(root / name), problem)
    if bad in DATA_CASES:
        name, problem = DATA_CASES[bad]
        data = root / name
        if data.name in ("dataset.h5", "split.json"):
            data = data.parent
        named = str(root / name)
        if command == "train":
            return Argv(["train", "--design", "BL-N", "--data", str(data), "--config",
                         str(root / "tiny.yaml"), "--no-progress", "-o", str(out)], env, named,
                        problem)
        if command == "finetune":
            return Argv(["finetune", "--from", str(root / "finetune.safetensors"), "--data",
                         str(data), "--strategy", "full", "--max-steps", "1", "--no-progress",
                         "-o", str(out)], env, named, problem)
        if command == "pairs":
            return Argv(["pairs", "--data", str(data), "--n", "1", "-o", str(out)], env, named,
                        problem)
    if bad in CONFIG_CASES:
        name, problem = CONFIG_CASES[bad]
        path = str(root / name)
        return Argv(["train", "--design", "BL-N", "--data", str(root / "prep"), "--config",
                     path, "--no-progress", "-o", str(out)], env, path, problem)
    if bad in OUTPUT_CASES:
        name, problem = OUTPUT_CASES[bad]
        argv, is_file = writer_argv(root, command)
        target = root / name / ("report.html" if is_file else "")
        return Argv([*argv, "-o", str(target)], env, str(target), problem)
    if bad == "--resume from a corrupt checkpoint":
        return Argv(["train", "--design", "BL-N", "--data", str(root / "prep"), "--config",
                     str(root / "tiny.yaml"), "--resume", "--no-progress", "-o", str(out)],
                    env, str(out / "checkpoints" / "last.ckpt"), "cannot (read|load)",
                    existing_output=True)
    raise KeyError((command, bad))


def prepare_existing_output(out: Path) -> None:
    """The run folder of the corrupt-checkpoint case: a last.ckpt that is not one."""
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 not a checkpoint" * 10)


# -------------------------------------------------------------------- the workspace


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    import nibabel as nib

    affine = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    image = nib.Nifti1Image(data, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    nib.save(image, str(path))
    return path


def _patched_pixdim(path: Path, data: np.ndarray, first: float) -> Path:
    """A NIfTI whose only geometry is the qform, with pixdim[1] = ``first`` (nibabel
    refuses to write that, so the header bytes are patched)."""
    plain = path.with_name(path.name.removesuffix(".gz"))
    _nifti(plain, data)
    block = bytearray(plain.read_bytes())
    block[80:84] = np.float32(first).tobytes()  # pixdim[1]
    block[254:256] = np.int16(0).tobytes()  # sform_code 0: the qform (and pixdim) rule
    plain.unlink()
    path.write_bytes(gzip.compress(bytes(block)))
    return path


def blobs(shape=(16, 16, 16), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float32)
    image = np.zeros(shape, np.float32)
    for _ in range(4):
        centre = rng.uniform(0.3, 0.7, 3) * np.asarray(shape)
        image += np.exp(-sum((grid[k] - centre[k]) ** 2 for k in range(3)) / 18.0)
    return image / image.max()


def make_files(files: Path) -> None:
    """The good 16^3 image and labels, and every bad image and label file."""
    files.mkdir(parents=True)
    image = blobs()
    labels = ((image > 0.3).astype(np.uint8) + (image > 0.6)).astype(np.uint8)
    good = _nifti(files / "good.nii.gz", image)
    _nifti(files / "good_seg.nii.gz", labels)
    (files / "folder.nii.gz").mkdir()
    whole = good.read_bytes()
    (files / "truncated.nii.gz").write_bytes(whole[: len(whole) // 2])
    (files / "garbage.nii.gz").write_bytes(b"this is not an image at all\n" * 40)
    _nifti(files / "two_d.nii.gz", image[:, :, 8].copy())
    _nifti(files / "four_d.nii.gz", np.stack([image, image], -1))
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        bad = image.copy()
        bad[3, 4, 5] = value
        _nifti(files / f"{name}.nii.gz", bad)
    _nifti(files / "constant.nii.gz", np.full((16, 16, 16), 7.0, np.float32))
    _patched_pixdim(files / "zero_spacing.nii.gz", image, 0.0)
    _patched_pixdim(files / "negative_spacing.nii.gz", image, -2.0)
    (files / "image.txt").write_bytes(whole)
    _nifti(files / "large.nii.gz", blobs((40, 40, 40)))
    huge = image.astype(np.float64)
    huge[3, 4, 5] = 1e39
    _nifti(files / "huge_values.nii.gz", huge)
    (files / "no_data.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 16 16 16\n"
                                       "ElementType = MET_FLOAT\nElementDataFile = gone.raw\n")
    (files / "garbage.mhd").write_text("this is not a MetaImage header\n")
    _nifti(files / "small_seg.nii.gz", labels[:, :, :12].copy())
    shifted = np.diag([2.0, 2.0, 2.0, 1.0])
    shifted[:3, 3] = (5.0, 0.0, 0.0)
    _nifti(files / "shifted_seg.nii.gz", labels, shifted)
    _nifti(files / "fractional_seg.nii.gz", labels.astype(np.float32) * 0.5)
    many = (np.arange(16**3) % 300).reshape(16, 16, 16).astype(np.int16)
    _nifti(files / "many_seg.nii.gz", many)
    negative = labels.astype(np.int16)
    negative[0, 0, 0] = -1
    _nifti(files / "negative_seg.nii.gz", negative)


def _finetune_model(path: Path) -> Path:
    """A model file whose card has a training profile (what ddmr finetune starts from)."""
    import torch

    from ddmr.designs import get_design
    from ddmr.model.file import save_model
    from ddmr.nn import UNet
    from train_helpers import tiny_profile

    torch.manual_seed(0)
    profile = tiny_profile()
    card = {"design": get_design("BL-N").to_dict(), "profile": profile.to_dict(),
            "input_size": list(profile.input_size), "label_values": [0, 1, 2]}
    return save_model(path, UNet(profile.unet), card)


def small_model(path: Path) -> Path:
    """A 16^3 BL-N model file (what ddmr evaluate scores)."""
    import torch

    from ddmr.designs import get_design
    from ddmr.model.file import save_model
    from ddmr.nn import UNet, UNetConfig

    torch.manual_seed(0)
    card = {"design": get_design("BL-N").to_dict(), "input_size": [16, 16, 16],
            "label_values": [0, 1, 2]}
    return save_model(path, UNet(UNetConfig(encoder=(4, 8), head=(4,))), card)


def forged_card(source: Path, target: Path, change, checksum: bool = True) -> Path:
    """Copy a model file with its card changed by ``change(card)`` (in place), the weights'
    bytes kept; with ``checksum`` the card's checksum is recomputed (a card that passes it
    but says something wrong), else the old one is kept (a card edited by hand)."""
    import struct

    from ddmr.model.file import CARD_CHECKSUM, card_checksum

    raw = source.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    card = json.loads(header["__metadata__"]["ddmr_card"])
    change(card)
    if checksum:
        card[CARD_CHECKSUM] = card_checksum(card)
    header["__metadata__"]["ddmr_card"] = json.dumps(card)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    target.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length:])
    return target


def nonfinite_weights(source: Path, target: Path, value: float) -> Path:
    """Copy a model file with one weight set to ``value`` (NaN or Inf) and both checksums
    recomputed: what a diverged training written by another tool looks like (``save_model``
    refuses such weights)."""
    from safetensors.torch import load_file, save_file

    from ddmr.model.file import CARD_CHECKSUM, card_checksum, read_card, weights_checksum

    state, card = load_file(str(source)), read_card(source)
    state["output.weight"].view(-1)[0] = value
    card["sha256"] = weights_checksum(state)
    card[CARD_CHECKSUM] = card_checksum(card)
    save_file(state, str(target), metadata={"ddmr_card": json.dumps(card)})
    return target


def _forged_models(root: Path) -> None:
    """The model files with bad cards of :data:`MODEL_CASES` and
    :data:`FINETUNE_CARD_CASES`."""
    tiny = root / "tiny.safetensors"
    forged_card(tiny, root / "card_changed.safetensors",
                lambda card: card.update(input_size=[24, 24, 24]), checksum=False)
    forged_card(tiny, root / "card_resnet.safetensors",
                lambda card: card.update(architecture="resnet"))
    forged_card(tiny, root / "card_zero_size.safetensors",
                lambda card: card.update(input_size=[0, 32, 32]))
    forged_card(tiny, root / "card_huge.safetensors",
                lambda card: card["architecture"].update(encoder=[4096] * 8))
    forged_card(tiny, root / "card_tiny_size.safetensors",
                lambda card: card.update(input_size=[2, 2, 2]))
    nonfinite_weights(tiny, root / "nan_weights.safetensors", float("nan"))
    nonfinite_weights(tiny, root / "inf_weights.safetensors", float("inf"))
    forged_card(root / "finetune.safetensors", root / "finetune_zero_size.safetensors",
                lambda card: card["profile"].update(input_size=[0, 32, 32]))


def _copy_truncated(source: Path, target_folder: Path, name: str) -> None:
    shutil.copytree(source, target_folder)
    data = (source / name).read_bytes()
    (target_folder / name).write_bytes(data[: len(data) // 2])


def tiny_config() -> dict:
    """Profile fields (over the cpu profile) of a training run that takes seconds."""
    from ddmr.train.profiles import get_profile
    from train_helpers import tiny_profile

    profile = tiny_profile().to_dict()
    config = {key: profile[key] for key in ("unet", "input_size", "val_every", "val_pairs",
                                            "checkpoint_every", "max_steps", "accumulate")}
    if "prealign" in get_profile("cpu").to_dict():
        config["prealign"] = False
    return config


def make_workspace(root: Path) -> Path:
    """Every good and bad input of the matrix under ``root``."""
    import h5py
    import yaml

    from ddmr.evaluate.pairs import make_pairs
    from register_helpers import save_tiny_model, tampered_copy
    from train_helpers import make_dataset

    make_files(root / "files")
    manifests = root / "manifests"
    manifests.mkdir()
    files = root / "files"
    for name, _ in IMAGE_CASES.values():
        (manifests / f"{name}.csv").write_text(f"id,image\ns0,{files / name}\n")
    for name, _ in LABEL_CASES.values():
        (manifests / f"{name}.csv").write_text(
            f"id,image,labels\ns0,{files / 'good.nii.gz'},{files / name}\n")
    # models
    save_tiny_model(root / "tiny.safetensors")
    _finetune_model(root / "finetune.safetensors")
    small_model(root / "evaluate.safetensors")
    (root / "model_folder").mkdir()
    whole = (root / "tiny.safetensors").read_bytes()
    (root / "truncated.safetensors").write_bytes(whole[: len(whole) // 2])
    import pickle

    (root / "model.pt").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    tampered_copy(root / "tiny.safetensors", root / "tampered.safetensors")
    _forged_models(root)
    # prepared datasets
    prep = make_dataset(root / "dataset", n=5, size=16)
    shutil.copytree(prep, root / "prep")
    prep = root / "prep"
    _copy_truncated(prep, root / "data_truncated", "dataset.h5")
    shutil.copytree(prep, root / "data_garbage")
    (root / "data_garbage" / "dataset.h5").write_bytes(b"not an HDF5 file\n" * 64)
    shutil.copytree(prep, root / "data_foreign")
    with h5py.File(root / "data_foreign" / "dataset.h5", "w") as h5:
        h5.create_dataset("volume", data=np.zeros((4, 4, 4), np.float32))
    shutil.copytree(prep, root / "data_no_split")
    (root / "data_no_split" / "split.json").unlink()
    shutil.copytree(prep, root / "data_bad_split")
    split = json.loads((prep / "split.json").read_text())
    split["train"] = [*split["train"], "nobody"]
    (root / "data_bad_split" / "split.json").write_text(json.dumps(split))
    # stored pairs
    from ddmr.augment import AugmentationConfig

    make_pairs(prep, root / "pairs", 1, 0, "test",
               AugmentationConfig(max_translation=2.0, nonrigid=False), progress=False)
    from ddmr.evaluate.runner import evaluate, write_results

    write_results(evaluate(root / "pairs", [root / "evaluate.safetensors"], ["none"],
                           progress=False), root / "results")
    _copy_truncated(root / "pairs", root / "pairs_truncated", "pairs.h5")
    shutil.copytree(root / "pairs", root / "pairs_bad_json")
    (root / "pairs_bad_json" / "pairs.json").write_text("{ not json")
    # configuration files
    (root / "tiny.yaml").write_text(yaml.safe_dump(tiny_config()))
    (root / "bad.yaml").write_text("unet: [unclosed\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    return root


# ------------------------------------------------------------------------ running


def run_case(case: Argv) -> int:
    """Run a case in this process with its environment; returns the exit status."""
    from ddmr.cli import main

    saved = {key: os.environ.get(key) for key in case.env}
    os.environ.update(case.env)
    try:
        return main(case.argv)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run_capturing_fd2(case: Argv) -> tuple[object, str]:
    """Run a case with file descriptor 2 sent to a file: what any library writes to the
    process's stderr (its own handlers, warnings) is caught, not only ``sys.stderr``."""
    import tempfile
    import traceback
    import warnings

    getattr(warnings, "_filters_mutated", lambda: None)()  # warn again as a new process
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            status: object = run_case(case)
        except SystemExit as error:
            status = error.code
        except BaseException:  # reported to the test as text
            traceback.print_exc()
            status = "exception"
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        return status, capture.read().decode(errors="replace")


if __name__ == "__main__":  # python tests/bad_input_cases.py CASES.json RESULTS.json
    sys.path.insert(0, str(Path(__file__).parent))
    cases = json.loads(Path(sys.argv[1]).read_text())
    results = {}
    for key, data in cases.items():
        out = Path(data["argv"][data["argv"].index("-o") + 1])
        if data["existing_output"]:
            prepare_existing_output(out)
        status, stderr = _run_capturing_fd2(Argv(**data))
        results[key] = {"status": status, "stderr": stderr}
    Path(sys.argv[2]).write_text(json.dumps(results))
