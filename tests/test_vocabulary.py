"""Issue 31, item 5: one vocabulary. Every option name has one meaning across the
commands; the renamed options (README, "Renamed options") work under their new names;
the old spellings still work for one release, hidden from ``--help``, each saying its new
name (one line on stderr, or a DeprecationWarning in the Python API)."""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import re
import sys
import warnings

import numpy as np
import pytest

from ddmr.cli import build_parser, main
from ddmr.commands.renamed import RENAMED
from ddmr.deprecated import RenamedWarning
from register_helpers import oblique_fixed, other_moving, sample_scene, write_pair

# -- the parsers -----------------------------------------------------------------------------


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _visible(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The options ``--help`` shows: flag -> action."""
    return {flag: action for action in parser._actions if action.option_strings
            and action.help != argparse.SUPPRESS for flag in action.option_strings}


def _hidden(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in parser._actions if action.option_strings
            and action.help == argparse.SUPPRESS for flag in action.option_strings}


#: flag -> what every command's help of it must say, where the helps differ: one meaning
#: in words (a flag shared with the same help text everywhere needs no entry)
MEANINGS = {
    "--ants-iterations": r"ANTs iterations",
    "--data": r"prepared (dataset|data)",
    "--design": r"design|BL-N",
    "--device": r"cpu.*cuda",
    "--engine-iterations": r"the most engine steps per level",
    "--json": r"JSON",
    "--labels": r"label map",
    "--max-rotation": r"degrees about each axis",
    "--max-tps": r"mm, .*(thin-plate-spline|TPS)",
    "--max-translation": r"mm along each axis",
    "--models": r"model files",
    "--moving": r"image",
    "--moving-labels": r"label map",
    "--no-intensity": r"no gamma",
    "--no-progress": r"progress bar",
    "--output": r"folder|file|directory",
    "-o": r"folder|file|directory",
    "--overwrite": r"replace|delete",
    "--pairing": r"a subject and an augmented copy of itself",
    "--seed": r"seed",
    "--split": r"the train/val/test split",
    "--stored-pairs": r"the pairs folder.*made by ddmr pairs",
    "--tps-grid": r"TPS control points per axis",
}


def _shared() -> dict[str, list[tuple[str, argparse.Action]]]:
    shared: dict[str, list[tuple[str, argparse.Action]]] = {}
    for name, parser in _commands().items():
        for flag, action in _visible(parser).items():
            if flag not in ("-h", "--help"):
                shared.setdefault(flag, []).append((name, action))
    return {flag: uses for flag, uses in shared.items() if len(uses) > 1}


def test_no_option_name_has_two_meanings():
    """(b) An option name used by several commands is one thing everywhere: the same
    destination, the same kind (a flag, or values), choices that agree, and help that
    says the same meaning."""
    problems = []
    for flag, uses in sorted(_shared().items()):
        actions = [action for _, action in uses]
        where = ", ".join(name for name, _ in uses)
        if len({a.dest for a in actions}) > 1:
            problems.append(f"{flag} ({where}): destinations {[a.dest for a in actions]}")
        if len({a.nargs == 0 for a in actions}) > 1:  # a flag here, a value there
            problems.append(f"{flag} ({where}): kinds {[type(a).__name__ for a in actions]}")
        choices = [set(a.choices) for a in actions if a.choices is not None]
        if choices and (len(choices) < len(actions) or not all(
                c <= d or d <= c for c in choices for d in choices)):
            problems.append(f"{flag} ({where}): choices that disagree {choices}")
        helps = {a.help for a in actions}
        if len(helps) > 1:
            if flag not in MEANINGS:
                problems.append(f"{flag} ({where}): different help texts and no entry in "
                                "MEANINGS saying the one meaning")
                continue
            problems += [f"{flag} ({name}): help {action.help!r} does not say "
                         f"{MEANINGS[flag]!r}" for name, action in uses
                         if not re.search(MEANINGS[flag], action.help or "")]
    assert not problems, "\n".join(problems)


def test_the_three_meanings_of_mode_have_three_names():
    commands = _commands()
    assert all("--mode" not in _visible(parser) for parser in commands.values())
    assert _visible(commands["register"])["--update"].choices == ("compositive", "additive",
                                                                  "svf")
    assert set(_visible(commands["finetune"])["--strategy"].choices) == {"full", "two-step"}
    assert set(_visible(commands["pairs"])["--pairing"].choices) == {"same-subject",
                                                                     "inter-subject"}


def test_pairs_is_a_csv_and_stored_pairs_a_folder():
    commands = _commands()
    with_pairs = [name for name, parser in commands.items() if "--pairs" in _visible(parser)]
    assert with_pairs == ["register"]
    assert "CSV" in _visible(commands["register"])["--pairs"].help
    for name in ("evaluate", "report"):
        assert "--stored-pairs" in _visible(commands[name])


def test_label_maps_are_named_labels_everywhere():
    """No visible option says ``seg``; label maps are ``--labels``, ``--fixed-labels``,
    ``--moving-labels`` (``--atlas-labels``, ``--merge-labels``, ``--crop-label``)."""
    for name, parser in _commands().items():
        for flag, action in _visible(parser).items():
            assert "seg" not in flag, f"ddmr {name} {flag}"
            if flag.endswith("labels") and action.nargs == 0:
                raise AssertionError(f"ddmr {name} {flag}: a label map option is a flag")
    assert "--moving-labels" in _visible(_commands()["apply"])


def test_every_old_spelling_is_hidden_and_listed():
    """Each old name of RENAMED is accepted by its command's parser, hidden from
    ``--help`` (the option list and the usage line), and stores where the new name does;
    no other hidden option exists."""
    commands = _commands()
    for name, parser in commands.items():
        assert set(_hidden(parser)) == {old for command, old, _ in RENAMED
                                        if command == name}, name
    for command, old, new in RENAMED:
        parser = commands[command]
        shown = _visible(parser)
        assert new.split()[0] in shown, (command, new)
        assert old not in re.findall(r"--[a-z][a-z-]*", parser.format_help()), (command, old)
        if command != "apply":  # apply --labels moved into --moving-labels (below)
            assert _hidden(parser)[old].dest == shown[new].dest


# -- (a) the old spellings work and name the new one; (c) the new names work --------------

#: command -> (argv around the option, the option's old spelling and value, its new)
PARSED = [
    (["register"], ["--fixed-seg", "f.nii.gz"], ["--fixed-labels", "f.nii.gz"]),
    (["register"], ["--moving-seg", "m.nii.gz"], ["--moving-labels", "m.nii.gz"]),
    (["register"], ["--mode", "svf"], ["--update", "svf"]),
    (["register"], ["--mode=additive"], ["--update=additive"]),
    (["augment", "image.nii.gz", "-o", "out"], ["--seg", "s.nii.gz"],
     ["--labels", "s.nii.gz"]),
    (["finetune", "--from", "m", "--data", "d", "-o", "o"], ["--mode", "full"],
     ["--strategy", "full"]),
    (["pairs", "--data", "d", "-o", "o"], ["--mode", "inter-subject"],
     ["--pairing", "inter-subject"]),
    (["evaluate", "-o", "r"], ["--pairs", "p"], ["--stored-pairs", "p"]),
    (["report", "r1", "r2", "-o", "r.html"], ["--pairs", "p1", "p2"],
     ["--stored-pairs", "p1", "p2"]),
]


def _namespace(argv: list[str]) -> dict:
    args = vars(build_parser().parse_args(argv))
    args.pop("_module")
    return args


@pytest.mark.parametrize(("base", "old", "new"), PARSED,
                         ids=[f"{b[0]} {o[0].split('=')[0]}" for b, o, _ in PARSED])
def test_an_old_option_parses_as_the_new_one_and_warns(base, old, new, capsys):
    assert _namespace([*base, *new]) != _namespace(base)  # (c) the new name works
    assert capsys.readouterr().err == ""  # and gives no warning
    assert _namespace([*base, *old]) == _namespace([*base, *new])
    err = capsys.readouterr().err.strip().splitlines()
    flag, replacement = old[0].split("=")[0], new[0].split("=")[0]
    assert err == [f"ddmr {base[0]}: warning: {flag} is deprecated and goes in the next "
                   f"release: use {replacement}"]


def test_the_old_name_reaches_the_command(tmp_path, capsys):
    """Through ``main``: ``evaluate --pairs`` and ``report --pairs`` give their value to
    the command as the new names do (their refusals name the new option)."""
    assert main(["evaluate", "--pairs", str(tmp_path / "absent"), "--baselines", "none",
                 "-o", str(tmp_path / "r")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("ddmr evaluate: warning: --pairs is deprecated")
    assert len(lines) == 2 and "absent" in lines[1]
    assert main(["report", "-o", str(tmp_path / "r.html"), "--pairs", "a"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("ddmr report: warning: --pairs is deprecated")
    assert lines[1] == ("ddmr report: error: --stored-pairs: give at most one pairs folder "
                        "per results folder")
    assert main(["evaluate", "-o", str(tmp_path / "r")]) == 2
    assert "--stored-pairs DIR is required" in capsys.readouterr().err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = write_pair(tmp_path_factory.mktemp("vocabulary"), shift=(1, 2, 0))
    return folder


def _register(files, out, *options: str) -> list[str]:
    return ["register", "--fixed", str(files / "fixed.nii.gz"), "--moving",
            str(files / "moving.nii.gz"), "--model", "none", "--engine-iterations", "3,2,0",
            "--no-qc", "-o", str(out), *options]


def _without_seconds(value):
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if "second" not in k}
    if isinstance(value, list):
        return [_without_seconds(v) for v in value]
    return value


def test_register_and_apply_old_and_new_spellings_agree(files, tmp_path, capsys):
    """``register --fixed-seg --moving-seg --mode svf`` and ``apply --moving F --labels``
    do what ``--fixed-labels --moving-labels --update svf`` and ``apply --moving-labels
    F`` do, each old name saying its new one on stderr."""
    import nibabel as nib

    labels = ["--fixed-labels", str(files / "fixed_seg.nii.gz"),
              "--moving-labels", str(files / "moving_seg.nii.gz")]
    new, old = tmp_path / "new", tmp_path / "old"
    assert main(_register(files, new, *labels, "--update", "svf")) == 0
    assert capsys.readouterr().err == ""
    assert main(_register(files, old, "--fixed-seg", labels[1], "--moving-seg", labels[3],
                          "--mode", "svf")) == 0
    err = capsys.readouterr().err
    for flag, replacement in (("--fixed-seg", "--fixed-labels"),
                              ("--moving-seg", "--moving-labels"), ("--mode", "--update")):
        assert (f"ddmr register: warning: {flag} is deprecated and goes in the next release: "
                f"use {replacement}") in err.splitlines()
    summary = json.loads((new / "summary.json").read_text())
    assert summary["engine"]["mode"] == "svf" and summary["metrics"]["dsc"] is not None
    first, second = (_without_seconds(json.loads((p / "summary.json").read_text()))
                     for p in (new, old))
    for key in ("engine", "metrics", "fixed_seg", "moving_seg", "inverse"):
        assert first[key] == second[key], key

    out_new, out_old = tmp_path / "new.nii.gz", tmp_path / "old.nii.gz"
    assert main(["apply", "--transform", str(new), "--moving-labels", labels[3], "-o",
                 str(out_new)]) == 0
    assert capsys.readouterr().err == ""
    assert main(["apply", "--transform", str(new), "--moving", labels[3], "--labels", "-o",
                 str(out_old)]) == 0
    assert capsys.readouterr().err.strip() == (
        "ddmr apply: warning: --labels is deprecated and goes in the next release: use "
        "--moving-labels FILE instead of --moving FILE --labels")
    warped = np.asarray(nib.load(out_new).dataobj)
    assert warped.dtype == np.uint8 and np.array_equal(
        warped, np.asarray(nib.load(out_old).dataobj))
    assert np.array_equal(warped, np.asarray(nib.load(new / "warped_seg.nii.gz").dataobj))
    # one of the three inputs, and --labels only with --moving
    for argv in (["--moving", labels[3], "--moving-labels", labels[3]],
                 ["--moving-labels", labels[3], "--labels"], ["--labels"]):
        assert main(["apply", "--transform", str(new), *argv, "-o",
                     str(tmp_path / "x.nii.gz")]) == 2
        assert "error" in capsys.readouterr().err


def _write_csv(path, header, rows) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_the_pairs_csv_label_columns_old_and_new(files, tmp_path, capsys):
    """A pairs CSV names its label maps ``fixed_labels,moving_labels``; the old
    ``fixed_seg,moving_seg`` still work, with one warning line; both at once are refused."""
    from ddmr.registration.batch import read_pairs

    row = [str(files / n) for n in ("fixed.nii.gz", "moving.nii.gz", "fixed_seg.nii.gz",
                                    "moving_seg.nii.gz")] + ["a"]
    new, old = tmp_path / "new.csv", tmp_path / "old.csv"
    _write_csv(new, ["fixed", "moving", "fixed_labels", "moving_labels", "id"], [row])
    _write_csv(old, ["fixed", "moving", "fixed_seg", "moving_seg", "id"], [row])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read = read_pairs(new)
    with pytest.warns(DeprecationWarning) as caught:
        assert read_pairs(old) == read
    assert [str(w.message) for w in caught] == [
        f"{old}: column {side}_seg is deprecated and goes in the next release: use column "
        f"{side}_labels" for side in ("fixed", "moving")]
    assert read[0].moving_labels == files / "moving_seg.nii.gz"
    with pytest.warns(DeprecationWarning, match="Pair.moving_seg is deprecated.*use "
                      "Pair.moving_labels"):
        assert read[0].moving_seg == read[0].moving_labels
    both = tmp_path / "both.csv"
    _write_csv(both, ["fixed", "moving", "fixed_seg", "fixed_labels"], [row[:4]])
    from ddmr.errors import InputError

    with pytest.raises(InputError, match="fixed_seg and fixed_labels both given"):
        read_pairs(both)

    out = tmp_path / "batch"
    assert main(["register", "--pairs", str(old), "--model", "none", "--affine", "none",
                 "--fast", "--no-progress", "--no-qc", "-o", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ddmr register: warning: {old}: column fixed_seg is deprecated and goes "
                   "in the next release: use column fixed_labels",
                   f"ddmr register: warning: {old}: column moving_seg is deprecated and goes "
                   "in the next release: use column moving_labels"]
    assert (out / "a" / "warped_seg.nii.gz").is_file()
    marker = json.loads((out / ".ddmr-batch.json").read_text())
    assert marker["settings"]["model"] == "none" and marker["settings"]["affine"] == "none"


# -- the Python API ----------------------------------------------------------------------------

def _pair():
    fixed_geometry, moving_geometry = oblique_fixed(), other_moving()
    return ((sample_scene(fixed_geometry), fixed_geometry),
            (sample_scene(moving_geometry, (1, 2, 0)), moving_geometry),
            (sample_scene(fixed_geometry, labels=True), fixed_geometry),
            (sample_scene(moving_geometry, (1, 2, 0), labels=True), moving_geometry))


def test_a_step_is_skipped_with_false_and_the_old_none_still_works():
    """``model=False``, ``affine=False``, ``engine=False``: no warning; the old
    ``model="none"``, ``affine="none"`` and ``fixed_seg=``/``moving_seg=`` give the same
    result with a DeprecationWarning naming the new spelling, blamed on the caller."""
    import ddmr

    fixed, moving, fixed_labels, moving_labels = _pair()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = ddmr.register(fixed, moving, fixed_labels=fixed_labels,
                            moving_labels=moving_labels, model=False, affine=False,
                            engine=False)
    with pytest.warns(DeprecationWarning) as caught:
        old = ddmr.register(fixed, moving, fixed_seg=fixed_labels, moving_seg=moving_labels,
                            model="none", affine="none", engine=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, RenamedWarning)]
    assert messages == [
        "register(fixed_seg=...) is deprecated and goes in the next release: use "
        "register(fixed_labels=...)",
        "register(moving_seg=...) is deprecated and goes in the next release: use "
        "register(moving_labels=...)",
        "model='none' is deprecated and goes in the next release: use model=False",
        "affine='none' is deprecated and goes in the next release: use affine=False"]
    assert all(w.filename == __file__ for w in caught), [w.filename for w in caught]
    assert old.summary["metrics"] == new.summary["metrics"]
    assert old.summary["affine_prealignment"] == new.summary["affine_prealignment"]
    assert np.array_equal(old.warped_seg, new.warped_seg)
    assert new.summary["model"] is None and new.summary["engine"] is None
    with pytest.raises(TypeError, match="both fixed_seg= and fixed_labels="):
        ddmr.register(fixed, moving, fixed_seg=fixed_labels, fixed_labels=fixed_labels)
    from ddmr.errors import ConfigError

    with pytest.raises(ConfigError, match="--affine 'headers'"):
        ddmr.register(fixed, moving, affine="headers")


def test_register_pairs_skips_with_false_and_warns_for_none(files, tmp_path):
    from ddmr.registration.batch import register_pairs

    table = tmp_path / "pairs.csv"
    _write_csv(table, ["fixed", "moving", "id"],
               [[str(files / "fixed.nii.gz"), str(files / "moving.nii.gz"), "a"]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = register_pairs(table, tmp_path / "new", model=False, affine=False,
                              engine=False, progress=False)
    with pytest.warns(DeprecationWarning) as caught:
        again = register_pairs(table, tmp_path / "old", model="none", affine="none",
                               engine=False, progress=False)
    assert [str(w.message).split(" is ")[0] for w in caught] == ["model='none'",
                                                                   "affine='none'"]
    assert all(w.filename == __file__ for w in caught)
    assert [r["qc"] for r in rows] == [r["qc"] for r in again]
    # the batches record the skipped steps as before ("none"), so old folders resume
    for name in ("new", "old"):
        settings = json.loads((tmp_path / name / ".ddmr-batch.json").read_text())["settings"]
        assert settings["model"] == "none" and settings["affine"] == "none"


def test_renamed_keywords_of_make_pairs_and_finetune(tmp_path):
    """``make_pairs(mode=)`` is ``pairing=``, ``finetune(mode=)`` is ``strategy=`` (their
    refusals of a bad value, before any work, name the new option)."""
    from ddmr.errors import ConfigError
    from ddmr.evaluate.pairs import make_pairs

    with pytest.warns(DeprecationWarning, match=r"make_pairs\(mode=...\) is deprecated.*"
                      r"make_pairs\(pairing=...\)"), \
            pytest.raises(ConfigError, match="--pairing sideways"):
        make_pairs(tmp_path, tmp_path / "p", 1, 0, mode="sideways")
    from ddmr.train.finetune import finetune

    with pytest.warns(DeprecationWarning, match=r"finetune\(mode=...\) is deprecated.*"
                      r"finetune\(strategy=...\)"), \
            pytest.raises(ConfigError, match="--strategy sideways"):
        finetune(tmp_path / "m", tmp_path, None, mode="sideways")


def test_the_designs_module_and_its_old_name():
    """The loss designs live in ``ddmr.designs``; ``ddmr.config`` is a deprecated alias
    giving the same objects."""
    import ddmr.designs

    sys.modules.pop("ddmr.config", None)
    with pytest.warns(DeprecationWarning, match="ddmr.config is deprecated.*use ddmr.designs"):
        config = importlib.import_module("ddmr.config")
    for name in config.__all__:
        assert getattr(config, name) is getattr(ddmr.designs, name)
    assert "UW-NSD" in ddmr.designs.DESIGNS
