"""``ddmr register`` on the command line: outputs, batch mode, and every kind of bad input
ending with one line, exit status 2 and no output folder."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from ddmr.cli import main
from register_helpers import (
    oblique_fixed,
    sample_scene,
    save_tiny_model,
    tampered_copy,
    write_pair,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = write_pair(tmp_path_factory.mktemp("cli"), shift=(1, 2, 0))
    fixed_geometry = oblique_fixed()
    save_tiny_model(folder / "tiny.safetensors")
    # bad inputs
    bad = sample_scene(fixed_geometry)
    affine = fixed_geometry.affine
    nib.save(nib.Nifti1Image(np.stack([bad, bad], -1), affine), str(folder / "4d.nii.gz"))
    nan = bad.copy()
    nan[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(nan, affine), str(folder / "nan.nii.gz"))
    fractional = sample_scene(fixed_geometry, labels=True).astype(np.float32)
    fractional[fractional == 1] = 1.5
    nib.save(nib.Nifti1Image(fractional, affine), str(folder / "fractional_seg.nii.gz"))
    tampered_copy(folder / "tiny.safetensors", folder / "tampered.safetensors")
    return folder


def _args(files, out, *extra, fixed="fixed.nii.gz", moving="moving.nii.gz",
          model="tiny.safetensors"):
    args = ["register", "--fixed", str(files / fixed), "--moving", str(files / moving),
            "-o", str(out), *extra]
    if model is not None:  # a file of the fixture folder by its path, else as given
        args += ["--model", str(files / model) if (files / model).is_file() else model]
    return args


def test_register_command_writes_outputs(files, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(_args(files, out, "--fixed-labels", str(files / "fixed_seg.nii.gz"),
                        "--moving-labels", str(files / "moving_seg.nii.gz")))
    assert status == 0
    assert "outputs in" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["dsc"] is not None
    assert (out / "warped_seg.nii.gz").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # an existing output folder is refused, then replaced with --overwrite
    assert main(_args(files, out)) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(_args(files, out, "--overwrite")) == 0
    assert not (out / "warped_seg.nii.gz").exists()


BAD_INPUTS = {
    "missing file": (dict(moving="absent.nii.gz"), "no such file"),
    "not 3D": (dict(fixed="4d.nii.gz"), "expected a 3D volume"),
    "NaN": (dict(moving="nan.nii.gz"), "NaN"),
    "unknown model": (dict(model="no-such-model"), "unknown model 'no-such-model'"),
    "bad checksum": (dict(model="tampered.safetensors"), "checksum mismatch"),
    "missing model file": (dict(model="./absent.safetensors"), "model file not found"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_no_output(files, tmp_path, capsys, case):
    options, message = BAD_INPUTS[case]
    out = tmp_path / "out"
    assert main(_args(files, out, **options)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_non_integer_labels_are_refused(files, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(files, out, "--fixed-labels", str(files / "fractional_seg.nii.gz"))) == 2
    err = capsys.readouterr().err.strip()
    assert "non-integer" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_default_register_runs_the_engine_from_the_affine_part(files, tmp_path, capsys):
    # no --model: no network (issue 30: its start did not help between people)
    out = tmp_path / "out"
    assert main(_args(files, out, model=None)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] is None
    assert summary["engine"]["started_from"] == "affine"
    assert summary["runtime_s"]["network"] == 0.0


def test_model_is_required_while_none_ships(files, tmp_path, capsys, monkeypatch):
    import ddmr.model.shipped

    monkeypatch.setattr(ddmr.model.shipped, "shipped_models", lambda: [])
    out = tmp_path / "out"
    assert main(_args(files, out, "--fast", model=None)) == 2  # the network alone
    err = capsys.readouterr().err.strip()
    assert "--model" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def _write_pairs(path, rows) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_batch_mode_one_folder_per_pair(files, tmp_path, capsys):
    pairs = tmp_path / "pairs.csv"
    _write_pairs(pairs, [
        {"fixed": str(files / "fixed.nii.gz"), "moving": str(files / "moving.nii.gz"),
         "fixed_labels": str(files / "fixed_seg.nii.gz"),
         "moving_labels": str(files / "moving_seg.nii.gz"), "id": "a"},
        {"fixed": str(files / "moving.nii.gz"), "moving": str(files / "fixed.nii.gz"),
         "fixed_labels": "", "moving_labels": "", "id": "b"},
    ])
    out = tmp_path / "batch"
    status = main(["register", "--pairs", str(pairs), "--model",
                   str(files / "tiny.safetensors"), "--no-progress", "-o", str(out)])
    assert status == 0
    assert (out / "a" / "warped_seg.nii.gz").is_file()
    assert (out / "b" / "displacement.nii.gz").is_file()
    assert not (out / "b" / "warped_seg.nii.gz").exists()
    with open(out / "batch.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == ["a", "b"]
    assert rows[0]["dsc"] and not rows[1]["dsc"]


def test_batch_mode_records_a_bad_pair_and_goes_on(files, tmp_path, capsys):
    """A pair whose image is bad is recorded in batch.csv with its message, the others are
    registered (a batch folder is resumable: nothing done is thrown away), and the
    command ends with status 2 and one line naming it."""
    pairs = tmp_path / "pairs.csv"
    _write_pairs(pairs, [
        {"fixed": str(files / "fixed.nii.gz"), "moving": str(files / "moving.nii.gz"),
         "id": "good"},
        {"fixed": str(files / "fixed.nii.gz"), "moving": str(files / "nan.nii.gz"),
         "id": "bad"},
    ])
    out = tmp_path / "batch"
    status = main(["register", "--pairs", str(pairs), "--model",
                   str(files / "tiny.safetensors"), "--no-progress", "--fast", "-o", str(out)])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad: " in err[0] and "NaN" in err[0]
    assert (out / "good" / "summary.json").is_file() and not (out / "bad").exists()
    with open(out / "batch.csv") as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    assert rows["bad"]["qc"] == "error" and rows["good"]["qc"] in ("pass", "fail")


def test_shards_resume_and_merge(files, tmp_path, capsys):
    import json

    pairs = tmp_path / "pairs.csv"
    _write_pairs(pairs, [{"fixed": str(files / "fixed.nii.gz"),
                          "moving": str(files / "moving.nii.gz"), "id": f"p{k}"}
                         for k in range(5)])
    out = tmp_path / "batch"
    base = ["register", "--pairs", str(pairs), "--model", str(files / "tiny.safetensors"),
            "--no-progress", "--fast", "--no-qc", "-o", str(out)]
    assert main([*base, "--shard", "1/2"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["p0", "p2", "p4"]
    assert main(["register", "--merge", str(out)]) == 2  # shard 2 not run yet
    assert "2 of 5 pairs are not done" in capsys.readouterr().err
    stamp = (out / "p0" / "summary.json").stat().st_mtime_ns
    assert main([*base, "--shard", "1/2"]) == 0  # a rerun skips what is done
    assert (out / "p0" / "summary.json").stat().st_mtime_ns == stamp
    assert main([*base, "--shard", "2/2"]) == 0
    assert main(["register", "--merge", str(out)]) == 0
    with open(out / "batch.csv") as handle:
        assert [row["id"] for row in csv.DictReader(handle)] == [f"p{k}" for k in range(5)]
    assert json.loads((out / ".ddmr-batch.json").read_text())["ids"] == \
        [f"p{k}" for k in range(5)]
    _write_pairs(pairs, [{"fixed": str(files / "fixed.nii.gz"),
                          "moving": str(files / "moving.nii.gz"), "id": "other"}])
    assert main(base) == 2  # another CSV into this batch folder is refused
    assert "other pairs" in capsys.readouterr().err
    assert main(["register", "--pairs", str(pairs), "--shard", "3/2", "-o", str(out)]) == 2


def test_cuda_without_a_gpu_is_one_line(files, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(_args(files, tmp_path / "out", "--device", "cuda")) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_pairs_and_single_pair_options_exclude_each_other(files, tmp_path, capsys):
    assert main(["register", "--pairs", "p.csv", "--fixed", "f.nii.gz", "-o",
                 str(tmp_path / "o")]) == 2
    assert main(["register", "--fixed", str(files / "fixed.nii.gz"), "-o",
                 str(tmp_path / "o")]) == 2
    assert "--moving" in capsys.readouterr().err


def test_engine_spacing_option_reaches_the_engine_and_is_checked(files, tmp_path, capsys):
    import argparse

    from ddmr.commands.register import add_arguments, engine_settings

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert engine_settings(parser.parse_args(["--engine-spacing", "1.5"])).spacing == 1.5
    assert engine_settings(parser.parse_args([])).spacing is None
    for bad in ("0", "-1", "nan", "inf"):
        assert main(_args(files, tmp_path / "out", "--engine-spacing", bad)) == 2
        assert "spacing" in capsys.readouterr().err
    assert main(_args(files, tmp_path / "out", "--fast", "--engine-spacing", "2")) == 2
    assert "--engine-spacing" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_read_pairs_resolves_relative_paths_and_checks_rows(tmp_path):
    from ddmr.errors import InputError
    from ddmr.registration.batch import read_pairs

    (tmp_path / "data").mkdir()
    for name in ("f.nii.gz", "m.nii.gz", "s.nii.gz"):
        (tmp_path / "data" / name).write_bytes(b"")
    pairs = tmp_path / "data" / "pairs.csv"
    pairs.write_text("fixed,moving,moving_labels\nf.nii.gz,m.nii.gz,s.nii.gz\n"
                     "m.nii.gz,f.nii.gz,\n")
    read = read_pairs(pairs)
    assert [p.id for p in read] == ["pair-001", "pair-002"]
    assert read[0].moving_labels == tmp_path / "data" / "s.nii.gz"
    assert read[1].moving_labels is None and read[1].fixed_labels is None
    pairs.write_text("fixed,moving,id\nf.nii.gz,m.nii.gz,x\nm.nii.gz,f.nii.gz,x\n")
    with pytest.raises(InputError, match="duplicate id 'x'"):
        read_pairs(pairs)
    pairs.write_text("fixed,mov\nf.nii.gz,m.nii.gz\n")
    with pytest.raises(InputError, match="missing column"):
        read_pairs(pairs)
    pairs.write_text("fixed,moving\nf.nii.gz,absent.nii.gz\n")
    with pytest.raises(InputError, match=r"absent\.nii\.gz: no such file"):
        read_pairs(pairs)


@pytest.mark.parametrize(("content", "message"), [
    (b"fixed,moving,id\nf.nii.gz,m.nii.gz,batch.csv\n", "name of a file DDMR writes"),
    (b"fixed,moving,id\nf.nii.gz,m.nii.gz,batch-1-of-2.csv\n", "name of a file DDMR writes"),
    (b"fixed,moving,id\nf.nii.gz,m.nii.gz," + b"x" * 300 + b"\n", "300 characters is too long"),
    (b"fixed,moving,id\nf.nii.gz,m.nii.gz,caf\xe9\n", "not UTF-8 text"),
    (b"fixed,moving,id\nf.nii.gz,m.nii.gz,../up\n", "not a safe folder name"),
])
def test_pair_ids_are_checked_before_any_work(files, tmp_path, capsys, content, message):
    """Issue 19, defect 11: ids that cannot name a pair's folder are refused in one line
    before anything is registered or written."""
    (tmp_path / "f.nii.gz").write_bytes((files / "fixed.nii.gz").read_bytes())
    (tmp_path / "m.nii.gz").write_bytes((files / "moving.nii.gz").read_bytes())
    (tmp_path / "pairs.csv").write_bytes(content)
    status = main(["register", "--pairs", str(tmp_path / "pairs.csv"), "--model",
                   str(files / "tiny.safetensors"), "-o", str(tmp_path / "out")])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "out").exists()
