"""Issue 33, batch items: a rerun never reuses stale pairs (11), ``--overwrite`` never
deletes the pairs of a process that runs (17), corrupt batch records (23), SIGTERM and
resume lines (24), ``--model none`` (25), CSVs with a byte-order mark (26), ``--shard ''``
(30)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from ddmr.cli import main
from ddmr.io.images import save_image
from register_helpers import oblique_fixed, sample_scene, save_tiny_model, write_batch_images

BOM = b"\xef\xbb\xbf"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_batch_images(tmp_path_factory.mktemp("batch33"))


def _write_pairs(path, rows, bom: bool = False) -> None:
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _rows(files, count=3, moving="moving.nii.gz"):
    return [{"fixed": str(files / "fixed.nii.gz"), "moving": str(files / moving),
             "id": f"p{k}"} for k in range(count)]


def _command(files, pairs, out, *extra, model=None, fast=True):
    return ["register", "--pairs", str(pairs), "--model",
            model or str(files / "tiny.safetensors"), "--no-progress", "--no-qc",
            "-o", str(out), *extra] + (["--fast"] if fast else [])


def _stamps(out):
    return {p.name: (p / "summary.json").stat().st_mtime_ns for p in out.iterdir()
            if (p / "summary.json").is_file()}


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# --- item 11: a rerun reuses a pair only when nothing it was registered from changed -----

def test_rerun_counts_registered_and_reused_pairs_honestly(files, tmp_path, capsys):
    pairs, out = tmp_path / "pairs.csv", tmp_path / "batch"
    _write_pairs(pairs, _rows(files))
    assert main(_command(files, pairs, out)) == 0
    assert f"3 of 3 pairs done in {out}: 3 registered now, 0 done before and reused" in \
        capsys.readouterr().out
    stamps = _stamps(out)
    shutil.rmtree(out / "p1")
    assert main(_command(files, pairs, out)) == 0
    assert "3 of 3 pairs done" in (line := capsys.readouterr().out)
    assert "1 registered now, 2 done before and reused" in line
    assert _stamps(out)["p0"] == stamps["p0"]
    record = json.loads((out / "p0" / "summary.json").read_text())["batch_input"]
    assert record["moving"]["path"] == str((files / "moving.nii.gz").resolve())
    assert record["moving"]["sha256"] and record["fixed_seg"] is None


def test_a_changed_row_is_refused_naming_it(files, tmp_path, capsys):
    """The same ids, another moving image for p1: was "3 pairs registered", nothing was."""
    pairs, out = tmp_path / "pairs.csv", tmp_path / "batch"
    _write_pairs(pairs, _rows(files))
    assert main(_command(files, pairs, out)) == 0
    stamps = _stamps(out)
    rows = _rows(files)
    rows[1]["moving"] = str(files / "other.nii.gz")
    _write_pairs(pairs, rows)
    capsys.readouterr()
    assert main(_command(files, pairs, out)) == 2
    err = _one_line(capsys)
    assert "1 done pair(s) were registered from other inputs" in err
    assert f"p1: moving {(files / 'moving.nii.gz').resolve()} -> " \
           f"{(files / 'other.nii.gz').resolve()}" in err
    assert f"delete their folders ({out / 'p1'})" in err and "--overwrite" in err
    assert _stamps(out) == stamps and capsys.readouterr().out == ""
    # deleting that pair's folder registers it again, from the new row
    shutil.rmtree(out / "p1")
    assert main(_command(files, pairs, out)) == 0
    assert "1 registered now, 2 done before and reused" in capsys.readouterr().out
    summary = json.loads((out / "p1" / "summary.json").read_text())
    assert summary["batch_input"]["moving"]["path"] == str((files / "other.nii.gz").resolve())


def test_a_file_changed_in_place_is_refused_and_a_moved_one_is_not(files, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("fixed.nii.gz", "moving.nii.gz"):
        shutil.copy(files / name, data / name)
    pairs, out = tmp_path / "pairs.csv", tmp_path / "batch"
    _write_pairs(pairs, _rows(data, 2))
    assert main(_command(files, pairs, out)) == 0
    # the same files elsewhere (copied: other paths and mtimes, the same contents): reused
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    _write_pairs(pairs, _rows(moved, 2))
    capsys.readouterr()
    assert main(_command(files, pairs, out)) == 0
    assert "0 registered now, 2 done before and reused" in capsys.readouterr().out
    # another image written over the moving one: refused
    shutil.copy(files / "other.nii.gz", moved / "moving.nii.gz")
    assert main(_command(files, pairs, out)) == 2
    err = _one_line(capsys)
    assert "2 done pair(s)" in err
    assert f"moving {(data / 'moving.nii.gz').resolve()} -> " \
           f"{(moved / 'moving.nii.gz').resolve()}" in err


def test_other_settings_are_refused_naming_them(files, tmp_path, capsys):
    pairs, out = tmp_path / "pairs.csv", tmp_path / "batch"
    _write_pairs(pairs, _rows(files, 2))
    assert main(_command(files, pairs, out)) == 0
    stamps = _stamps(out)
    capsys.readouterr()
    assert main(_command(files, pairs, out, "--affine", "none")) == 2
    err = _one_line(capsys)
    assert "a batch registered with other settings: affine 'world' -> 'none'" in err
    assert "pass --overwrite to register this batch afresh" in err
    other = save_tiny_model(tmp_path / "other.safetensors", bias=(0.5, 0.0, 0.0))
    assert main(_command(files, pairs, out, model=str(other))) == 2
    assert "other settings: model '" in _one_line(capsys)
    assert main(_command(files, pairs, out, "--engine-iterations", "2,2,1", fast=False)) == 2
    assert "other settings: engine False -> {'levels': [4, 2, 1], " in _one_line(capsys)
    assert _stamps(out) == stamps
    # --overwrite registers the batch again with the new settings
    assert main(_command(files, pairs, out, "--affine", "none", "--overwrite")) == 0
    assert "2 registered now, 0 done before" in capsys.readouterr().out
    assert all(stamps[k] != v for k, v in _stamps(out).items())
    marker = json.loads((out / ".ddmr-batch.json").read_text())
    assert marker["settings"]["affine"] == "none" and marker["ids"] == ["p0", "p1"]


# --- item 17: --overwrite never deletes the pairs of a process that runs ----------------

HOLDER = """
import fcntl, os, sys, time
descriptor = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(descriptor, fcntl.LOCK_SH)
print("locked", flush=True)
sys.stdin.read()
"""


def test_overwrite_leaves_a_running_shard_alone(files, tmp_path, capsys):
    pairs, out = tmp_path / "pairs.csv", tmp_path / "batch"
    _write_pairs(pairs, _rows(files, 4))
    assert main(_command(files, pairs, out, "--shard", "2/2")) == 0  # p1, p3
    stamps = _stamps(out)
    assert sorted(stamps) == ["p1", "p3"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # shard 2 is still running (it holds the batch's shared lock)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER,
                               str(tmp_path / ".batch.ddmr-batch.lock")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        # shard 1 with --overwrite and other settings: refused, shard 2's pairs kept
        assert main(_command(files, pairs, out, "--shard", "1/2", "--overwrite",
                             "--affine", "none")) == 2
        err = _one_line(capsys)
        assert "other settings" in err and "another process of a batch is using" in err
        assert _stamps(out) == stamps
        # shard 1 with --overwrite and the same settings: registers its own pairs only
        assert main(_command(files, pairs, out, "--shard", "1/2", "--overwrite")) == 0
        now = _stamps(out)
        assert sorted(now) == ["p0", "p1", "p2", "p3"]
        assert {k: now[k] for k in stamps} == stamps
    finally:
        holder.communicate("")
    # no process runs: --overwrite with other settings replaces the folder
    assert main(_command(files, pairs, out, "--shard", "1/2", "--overwrite",
                         "--affine", "none")) == 0
    assert sorted(_stamps(out)) == ["p0", "p2"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_the_lock_is_shared_by_shards_and_exclusive_for_overwrite(tmp_path):
    from ddmr.registration.batch import _BatchLock

    out = tmp_path / "batch"
    first, second, third = _BatchLock(out), _BatchLock(out), _BatchLock(out)
    assert first.acquire(exclusive=False) and second.acquire(exclusive=False)
    assert not third.acquire(exclusive=True)
    first.release()
    assert (tmp_path / ".batch.ddmr-batch.lock").exists()  # the second holds it
    second.release()
    assert not (tmp_path / ".batch.ddmr-batch.lock").exists()
    assert third.acquire(exclusive=True)
    third.share()
    assert first.acquire(exclusive=False)
    first.release()
    third.release()
    assert list(tmp_path.iterdir()) == []


# --- item 23: corrupt records ------------------------------------------------------------

@pytest.mark.parametrize("broken", ["summary", "marker", "marker-list", "summary-fields"])
def test_a_corrupt_record_is_one_line(files, tmp_path, capsys, broken):
    pairs, out = tmp_path / "pairs.csv", tmp_path / "batch"
    _write_pairs(pairs, _rows(files, 2))
    assert main(_command(files, pairs, out)) == 0
    path = out / ("p1/summary.json" if broken.startswith("summary") else ".ddmr-batch.json")
    path.write_text({"summary": '{"metrics": ', "marker": "{not json",
                     "marker-list": "[1, 2]", "summary-fields": '{"qc": 1}'}[broken])
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    for command in (_command(files, pairs, out), ["register", "--merge", str(out)]):
        assert main(command) == 2
        err = _one_line(capsys)
        assert err.startswith(f"ddmr register: error: {path}: ")
        if broken.startswith("summary"):
            assert f"delete the folder {out / 'p1'} to register the pair again" in err
        else:
            assert "pass --overwrite to register this batch afresh" in err
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    if not broken.startswith("summary"):
        assert main(_command(files, pairs, out, "--overwrite")) == 0


# --- item 24: a stopped or failed batch says how to resume -------------------------------

@pytest.mark.parametrize(("signal_number", "status"), [(signal.SIGTERM, 143),
                                                        (signal.SIGINT, 130)])
def test_a_signal_stops_the_batch_with_one_line(files, tmp_path, capsys, monkeypatch,
                                                signal_number, status):
    import ddmr.registration.pipeline as pipeline

    real, calls = pipeline.register, []
    before = signal.getsignal(signal.SIGINT)

    def register(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal_number)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "register", register)
    pairs, out = tmp_path / "pairs.csv", tmp_path / "batch"
    _write_pairs(pairs, _rows(files, 4))
    assert main(_command(files, pairs, out)) == status
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert len(err.splitlines()) == 1
    name = signal.Signals(signal_number).name
    assert err == (f"ddmr register: {out}: interrupted by {name}: 2 of 4 pairs are done (2 "
                   "registered now) and kept; run the same command again to resume (done "
                   "pairs are skipped, the pair under way is registered again)")
    assert sorted(_stamps(out)) == ["p0", "p1"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".p")] == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is before  # (whatever the process had)
    monkeypatch.setattr(pipeline, "register", real)
    assert main(_command(files, pairs, out)) == 0
    assert "2 registered now, 2 done before and reused" in capsys.readouterr().out


def test_a_handler_left_in_the_process_does_not_swallow_the_stop(files, tmp_path, capsys,
                                                                 monkeypatch):
    """A SIGINT handler that does nothing (a library's, or a training's left behind) is
    set aside while the batch runs, and put back after."""
    import ddmr.registration.pipeline as pipeline

    real, calls = pipeline.register, []

    def register(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    def ignore(number, frame):
        return None

    monkeypatch.setattr(pipeline, "register", register)
    pairs, out = tmp_path / "pairs.csv", tmp_path / "batch"
    _write_pairs(pairs, _rows(files, 3))
    previous = signal.signal(signal.SIGINT, ignore)
    try:
        assert main(_command(files, pairs, out)) == 130
        assert signal.getsignal(signal.SIGINT) is ignore
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "interrupted by SIGINT: 1 of 3 pairs are done" in capsys.readouterr().err


def test_sigterm_to_a_batch_process_prints_how_to_resume(files, tmp_path):
    """The real thing: a ``ddmr register --pairs`` process sent SIGTERM (it printed
    nothing and died of the signal)."""
    pairs, out = tmp_path / "pairs.csv", tmp_path / "batch"
    _write_pairs(pairs, _rows(files, 200))
    process = subprocess.Popen([sys.executable, "-m", "ddmr.cli",
                                *_command(files, pairs, out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        import time

        deadline = time.monotonic() + 120
        while not (out / "p0" / "summary.json").is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143
    assert stderr.strip().startswith(f"ddmr register: {out}: interrupted by SIGTERM: ")
    assert "run the same command again to resume" in stderr and len(stderr.splitlines()) == 1


def test_failed_pairs_say_how_to_register_them(files, tmp_path, capsys):
    bad = tmp_path / "nan.nii.gz"
    geometry = oblique_fixed()
    volume = sample_scene(geometry)
    volume[1, 1, 1] = np.nan
    save_image(bad, volume, geometry)
    pairs, out = tmp_path / "pairs.csv", tmp_path / "batch"
    rows = _rows(files, 2)
    rows[1]["moving"] = str(bad)
    _write_pairs(pairs, rows)
    assert main(_command(files, pairs, out)) == 2
    captured = capsys.readouterr()
    assert "1 of 2 pairs done" in captured.out and "1 registered now" in captured.out
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "p1: " in err
    assert err.endswith("fix them and run the same command again to register them (done "
                        "pairs are skipped)")


# --- item 25: --model none -------------------------------------------------------------

def test_model_none_with_pairs(files, tmp_path, capsys):
    pairs, out = tmp_path / "pairs.csv", tmp_path / "batch"
    _write_pairs(pairs, _rows(files, 2))
    command = ["register", "--pairs", str(pairs), "--model", "none", "--no-progress",
               "--engine-iterations", "2,2,1", "--no-qc", "-o", str(out)]
    assert main(command) == 0
    assert "2 registered now" in capsys.readouterr().out
    summary = json.loads((out / "p0" / "summary.json").read_text())
    assert not summary.get("model")
    marker = json.loads((out / ".ddmr-batch.json").read_text())
    assert marker["settings"]["model"] == "none"
    assert main(command) == 0
    assert "0 registered now, 2 done before and reused" in capsys.readouterr().out


# --- item 26: CSVs with a UTF-8 byte-order mark (Excel's "CSV UTF-8") --------------------

def test_pairs_csv_with_a_byte_order_mark(files, tmp_path, capsys):
    pairs, out = tmp_path / "pairs.csv", tmp_path / "batch"
    _write_pairs(pairs, _rows(files, 1), bom=True)
    assert pairs.read_bytes().startswith(BOM)
    assert main(_command(files, pairs, out)) == 0
    assert (out / "p0" / "summary.json").is_file()


def test_every_csv_reader_accepts_a_byte_order_mark(tmp_path):
    from ddmr.data.adapters import csv_layout
    from ddmr.data.label_map import read_label_map
    from ddmr.evaluate.tables import read_per_pair
    from ddmr.io.files import read_csv, read_csv_records
    from ddmr.registration.apply import read_points

    table = tmp_path / "table.csv"
    table.write_bytes(BOM + b"a,b\n1,2\n")
    assert read_csv(table) == [["a", "b"], ["1", "2"]]
    assert read_csv_records(table) == (["a", "b"], [{"a": "1", "b": "2"}])
    # prepare's csv layout
    (tmp_path / "s1.nii.gz").write_bytes(b"")
    manifest = tmp_path / "manifest.csv"
    manifest.write_bytes(BOM + b"id,image\ns1,s1.nii.gz\n")
    assert [source.id for source in csv_layout(manifest)] == ["s1"]
    # apply's points
    points = tmp_path / "points.csv"
    points.write_bytes(BOM + b"x_ras,y_ras,z_ras\n1,2,3\n")
    table_read = read_points(points)
    assert table_read.header == ["x_ras", "y_ras", "z_ras"]
    np.testing.assert_allclose(table_read.points_ras, [[1, 2, 3]])
    # a label map without a header: the first mapping is not taken for one
    label_map = tmp_path / "labels.csv"
    label_map.write_bytes(BOM + b"1,2\n3,4\n")
    assert read_label_map(label_map) == {1: 2, 3: 4}
    # stats' per_pair.csv (pandas already skipped the mark)
    per_pair = tmp_path / "per_pair.csv"
    per_pair.write_bytes(BOM + b"method,pair,tre\na,1,2.0\n")
    assert list(read_per_pair(per_pair)[0].columns) == ["method", "pair", "tre"]


def test_a_csv_that_is_not_utf8_is_one_line(tmp_path):
    from ddmr.errors import InputError
    from ddmr.io.files import read_csv

    table = tmp_path / "table.csv"
    table.write_bytes(b"a,b\ncaf\xe9,1\n")
    with pytest.raises(InputError, match=r"table\.csv: not UTF-8 text \(byte 0xe9 at offset "
                                         r"7\)"):
        read_csv(table)


# --- item 30: --shard '' ----------------------------------------------------------------

@pytest.mark.parametrize("text", ["", " ", "1", "1/2/3", "0/2", "3/2", "a/b"])
def test_an_empty_or_malformed_shard_is_refused(files, tmp_path, capsys, text):
    pairs, out = tmp_path / "pairs.csv", tmp_path / "batch"
    _write_pairs(pairs, _rows(files, 2))
    assert main(_command(files, pairs, out, "--shard", text)) == 2
    err = _one_line(capsys)
    assert f"--shard {text!r}: expected I/N with 1 <= I <= N" in err
    assert not out.exists()
    assert main(["register", "--fixed", str(files / "fixed.nii.gz"), "--moving",
                 str(files / "moving.nii.gz"), "--shard", text, "-o", str(out)]) == 2
    assert "--shard I/N needs --pairs" in _one_line(capsys)
