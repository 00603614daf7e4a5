"""Issue 10's bad-input matrix: every command that reads user files, fed each kind of bad
file, ends with exit status 2, one line on stderr naming the file and the problem, no
traceback, and nothing written. The cases are in ``bad_input_cases.py`` (and tabled in
``docs/reliability.md``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bad_input_cases import (
    CASES,
    case_argv,
    make_workspace,
    prepare_existing_output,
    run_case,
    writer_argv,
)
from ddmr.cli import main
from ddmr.errors import InputError


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("bad_inputs"))


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its content (folders as empty entries)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"")
            for p in sorted(folder.rglob("*"))}


def check_message(err: str, command: str, names: str, problem: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    line = lines[0]
    assert line.startswith(f"ddmr {command}: error: "), line
    assert "Traceback" not in err
    assert names in line, f"the message does not name {names}: {line}"
    assert re.search(problem, line), f"the message does not say {problem!r}: {line}"


#: cases that fail today because of code outside this test's reach, with the reason
KNOWN_FAILURES: dict[tuple[str, str], str] = {}


def _cases():
    for command, bad in CASES:
        reason = KNOWN_FAILURES.get((command, bad))
        marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
        yield pytest.param(command, bad, id=f"{command}-{bad}", marks=marks)


@pytest.mark.parametrize(("command", "bad"), _cases())
def test_bad_input_is_one_line_exit_2_and_nothing_written(workspace, tmp_path, capsys,
                                                          command, bad):
    out = tmp_path / "out"
    case = case_argv(workspace, command, bad, out)
    if case.existing_output:
        prepare_existing_output(out)
    before = tree(tmp_path)
    inputs = tree(workspace / "files")
    status = run_case(case)
    captured = capsys.readouterr()
    assert status == 2, captured.err
    check_message(captured.err, command, case.names, case.problem)
    assert captured.out == ""
    assert tree(tmp_path) == before  # no OUT, no temporary folder, an old OUT unchanged
    assert tree(workspace / "files") == inputs


def test_debug_shows_the_traceback(workspace, tmp_path):
    case = case_argv(workspace, "augment", "NaN voxels", tmp_path / "out")
    with pytest.raises(InputError, match="NaN or Inf"):
        main(["--debug", *case.argv])
    assert list(tmp_path.iterdir()) == []


def test_memory_budget_setting_is_checked(workspace, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DDMR_MAX_IMAGE_MB", "lots")
    assert main(["augment", str(workspace / "files" / "good.nii.gz"), "-o",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "DDMR_MAX_IMAGE_MB='lots'" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("DDMR_MAX_IMAGE_MB", "1")  # 1 MB is enough for 16^3
    assert main(["augment", str(workspace / "files" / "good.nii.gz"), "-o",
                 str(tmp_path / "out"), "--no-nonrigid"]) == 0


@pytest.mark.slow
def test_real_stderr_of_a_process_is_one_line(workspace, tmp_path):
    """The same matrix in a child process with file descriptor 2 captured: libraries that
    print on their own (nibabel's header fixes, warnings, progress bars) are caught too."""
    cases = {}
    for k, (command, bad) in enumerate(CASES):
        if (command, bad) in KNOWN_FAILURES:
            continue
        case = case_argv(workspace, command, bad, tmp_path / f"out{k:03d}")
        cases[f"{command}: {bad}"] = {**case.__dict__}
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    helpers = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(helpers), *filter(None, [os.environ.get("PYTHONPATH")])])}
    result = subprocess.run(
        [sys.executable, str(helpers / "bad_input_cases.py"), str(tmp_path / "cases.json"),
         str(tmp_path / "results.json")],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    failures = []
    for key, outcome in results.items():
        command = key.split(":")[0]
        data = cases[key]
        lines = outcome["stderr"].strip().splitlines()
        if (outcome["status"] != 2 or len(lines) != 1 or data["names"] not in lines[0]
                or not lines[0].startswith(f"ddmr {command}: error: ")):
            failures.append(f"{key}: status {outcome['status']}, stderr:\n{outcome['stderr']}")
    assert not failures, "\n\n".join(failures)
    leftovers = [p.name for p in tmp_path.iterdir()
                 if p.name not in ("cases.json", "results.json")
                 and not cases_existing(cases, p)]
    assert leftovers == []


def cases_existing(cases: dict, path: Path) -> bool:
    """True for the output folder of a case that starts from an existing folder."""
    return any(data["existing_output"] and data["argv"][data["argv"].index("-o") + 1]
               == str(path) for data in cases.values())


# ------------------------------------------------------- an existing OUT is kept

#: commands that write an OUT (their good command lines: bad_input_cases.writer_argv);
#: the inputs are good, so only the existing OUT stops them
WRITERS = ("prepare", "augment", "register", "pairs", "evaluate", "report", "train",
           "finetune", "demo")

#: writers cheap enough to run again with --overwrite here
CHEAP = ("prepare", "augment", "register", "pairs", "evaluate", "report")


@pytest.mark.parametrize("command", WRITERS)
def test_existing_output_is_kept_without_overwrite(workspace, tmp_path, capsys, command):
    argv, is_file = writer_argv(workspace, command)
    capsys.readouterr()
    out = tmp_path / ("out.html" if is_file else "out")
    if is_file:
        out.write_text("an older report\n")
    else:
        out.mkdir()
        (out / "keep.txt").write_text("an older result\n")
    before = tree(tmp_path)
    assert main([*argv, "-o", str(out)]) == 2
    captured = capsys.readouterr()
    check_message(captured.err, command, str(out), "exists|not empty|--overwrite")
    assert tree(tmp_path) == before
    if command in CHEAP:
        assert main([*argv, "-o", str(out), "--overwrite"]) == 0
        assert not (out / "keep.txt").exists() if not is_file else \
            "an older report" not in out.read_text()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------- untrusted files


def test_the_package_never_unpickles_or_starts_a_shell():
    """A scan of the source: every ``torch.load`` (and Lightning ``fit`` from a checkpoint)
    passes ``weights_only=True``; nothing imports pickle or subprocess, calls os.system,
    eval or exec. (Model files are safetensors; their checksum is tested elsewhere.)"""
    import ast

    import ddmr

    problems = []
    for path in sorted(Path(ddmr.__file__).parent.rglob("*.py")):
        tree_ = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree_):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "subprocess", "dill", "shelve")
                       for n in names):
                    problems.append(f"{where}: imports {names}")
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
            keywords = {k.arg: k.value for k in node.keywords}
            needs_weights_only = ((owner == "torch" and name == "load")
                                  or (name == "fit" and "ckpt_path" in keywords))
            if needs_weights_only:
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{where}: {owner or '?'}.{name} without weights_only=True")
            bare = isinstance(func, ast.Name)
            if (owner, name) == ("os", "system") or (bare and name in ("eval", "exec")):
                problems.append(f"{where}: calls {name}")
    assert problems == []
