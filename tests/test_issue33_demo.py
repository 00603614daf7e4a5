"""Issue 33, the demo's items: ANTs settings reach inter-subject pairs and the report says
how ANTs ran (4), no tests on too few independent pairs and a log time axis (7), DSC over
the labels both maps have (8), .gitignore (9), the demo's interruption line (24)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import ddmr.baselines.peers
import ddmr.report.figures
from ddmr import stats
from ddmr.baselines.ants import AntsSettings, describe
from ddmr.cli import main
from ddmr.data.cohort import sample_cohort_dir
from ddmr.demo import QUICK, Demo
from ddmr.evaluate.tables import summarise, summary_markdown
from ddmr.metrics import pair_metrics
from ddmr.report.figures import boxplot_metrics

ROOT = sample_cohort_dir()
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def inter_pairs(tmp_path_factory) -> Path:
    """The two inter-subject pairs of the bundled cohort's held-out heads (96^3, 2 mm)."""
    folder = tmp_path_factory.mktemp("inter33")
    assert main(["prepare", str(ROOT), "-o", str(folder / "prep"), "--size", "32",
                 "--spacing", "6", "--split-file", str(ROOT / "split.json"),
                 "--no-progress"]) == 0
    assert main(["pairs", "--data", str(folder / "prep"), "--pairing", "inter-subject",
                 "-o", str(folder / "pairs"), "--no-progress"]) == 0
    return folder / "pairs"


# -- item 4: the ANTs settings on inter-subject pairs, and what the report says -------------


def test_inter_subject_ants_runs_with_the_given_settings(inter_pairs, tmp_path, monkeypatch):
    """--ants-iterations reached same-subject pairs only: inter-subject pairs ran antspyx's
    one-call defaults (760 s per SyNCC in the quick demo). Now DDMR's two ANTs stages run
    with the given iterations, baselines.json records them and the report says so."""
    def defaults(*args, **kwargs):
        raise AssertionError("antspyx's one-call defaults ran despite --ants-iterations")

    monkeypatch.setattr(ddmr.baselines.peers, "syn", defaults)
    out = tmp_path / "results"
    assert main(["evaluate", "--stored-pairs", str(inter_pairs), "--baselines", "syn,none",
                 "--ants-iterations", "5/2", "-o", str(out), "--no-progress"]) == 0
    results = pd.read_csv(out / "per_pair.csv")
    assert set(results["method"]) == {"SyN", "none"} and results["pair"].nunique() == 2
    syn = results[results["method"] == "SyN"]
    none = results[results["method"] == "none"]
    # ANTs started from the centres of mass: the heads ~190 mm apart overlap afterwards
    assert (syn["dsc"].to_numpy() > none["dsc"].to_numpy() + 0.3).all()
    # warping counts in every method's time, "none" too (a log time axis needs it > 0)
    assert (results["seconds"] > 0).all()
    notes = json.loads((out / "baselines.json").read_text())
    assert notes == {"SyN": describe("syn", AntsSettings(
        affine_iterations=(5,), affine_shrink_factors=(1,), affine_smoothing_sigmas=(0.0,),
        syn_iterations=(2,), sampling=32), same_grid=False)}
    assert "affine 5 then Mattes MI SyN 2 iterations per level (reduced" in notes["SyN"]
    report = tmp_path / "report.html"
    assert main(["report", str(out), "-o", str(report), "--overlay-pairs", "0"]) == 0
    assert "ANTs as run in this section: SyN: affine 5 then Mattes MI SyN 2" \
        in report.read_text()


def test_ants_descriptions_say_what_runs():
    assert describe("syncc", None, same_grid=False) == \
        "SyNCC: antspyx's one-call SyNCC at its own defaults"
    assert describe("syn", None) == ("SyN: affine 2100x1200x1200x10 then Mattes MI SyN "
                                     "40x20x0 iterations per level (the defaults)")
    assert "reduced" not in describe("syncc", None, same_grid=True)


def test_demo_logs_the_real_number_of_pairs(inter_pairs, tmp_path):
    """The demo printed settings.n_pairs (4) for the 2 inter-subject pairs."""
    printed: list[str] = []
    demo = Demo(tmp_path / "demo", QUICK.replace(baselines=("none",), engine=False),
                progress=printed.append)
    demo.evaluate(inter_pairs, {}, tmp_path / "demo" / "results")
    assert any(line.endswith("evaluating none on 2 pairs") for line in printed), printed
    assert not (tmp_path / "demo" / "results" / "baselines.json").exists()  # no ANTs


# -- item 7: statistics on too few independent pairs, the time axis ----------------------------


def _frame(subjects: list[str], methods=("a", "b", "none"), seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [{"pair": f"{k:04d}", "subject": subject, "method": method,
             "tre": rng.normal(3 if method == "a" else 5, 0.01), "seconds": 1.0}
            for k, subject in enumerate(subjects) for method in methods]
    return pd.DataFrame(rows)


def test_two_orderings_of_one_pair_of_heads_get_no_tests(tmp_path):
    """Tukey HSD ran on the 2 orderings of one pair of heads and printed bold
    "significant" p-values; now no test runs below 5 independent pairs, and it says why."""
    inter = _frame(["A<-B", "B<-A"])
    assert stats.independent_pairs(inter) == 1
    text = stats.write_statistics(inter, tmp_path)
    assert "No tests" in text and "A<-B and B<-A" in text and "1 independent pair " in text
    assert "Tukey HSD" not in text and "**" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats_tre.md"]
    # six heads in three disjoint pairs, both orderings: 3 observations, still too few
    assert stats.independent_pairs(_frame(["A<-B", "B<-A", "C<-D", "D<-C", "E<-F",
                                           "F<-E"])) == 3
    # same-subject pairs: each its own observation; 6 of them are tested
    enough = _frame(["s1", "s2", "s1", "s2", "s1", "s2"])
    assert stats.independent_pairs(enough) == 6
    text = stats.write_statistics(enough, tmp_path)
    assert "Tukey HSD" in text and (tmp_path / "stats_tre_tukey.csv").is_file()
    # an earlier run's tests do not outlive a rerun on too few pairs
    stats.write_statistics(enough.iloc[:6], tmp_path)
    assert not (tmp_path / "stats_tre_tukey.csv").exists()


@pytest.mark.parametrize("none_seconds, scale", [(0.1, "log"), (0.0, "symlog")])
def test_time_axis_is_logarithmic_in_every_section(tmp_path, monkeypatch, none_seconds,
                                                   scale):
    """The inter-subject section's time plot was linear: its "none" took 0 s (warping was
    not counted), which the log rule excluded, and a 50x range is under its 100x."""
    frame = pd.DataFrame({"method": ["SyN", "SyN", "none", "none"],
                          "seconds": [5.0, 6.0, none_seconds, none_seconds],
                          "tre": [1.0, 2.0, 3.0, 4.0]})
    figures = []

    def keep(figure, path, dpi=90):
        figures.append(figure)
        return path

    monkeypatch.setattr(ddmr.report.figures, "_save", keep)
    boxplot_metrics(frame, tmp_path / "box.png")
    (axis,) = [ax for ax in figures[0].axes if ax.get_title() == "Time"]
    assert axis.get_yscale() == scale


# -- item 8: DSC over the labels both maps have ------------------------------------------------


def test_dsc_over_shared_labels_is_scored_apart():
    """A 3-label fixed map against a 2-label moving map, perfectly aligned: DSC 2/3 (the
    missing label scores 0 whatever the registration does); DSC shared 1."""
    fixed_labels = np.zeros((12, 12, 12), np.uint8)
    fixed_labels[1:4], fixed_labels[5:8], fixed_labels[9:11] = 1, 2, 3
    moving_labels = np.where(fixed_labels == 3, 0, fixed_labels).astype(np.uint8)
    image = fixed_labels.astype(np.float32) / 3
    values = pair_metrics(image, image, (1, 1, 1), np.zeros((3, 12, 12, 12), np.float32),
                          fixed_labels, moving_labels, moving_labels=moving_labels)
    assert values["dsc"] == pytest.approx(2 / 3) and values["dsc_shared"] == 1.0
    assert (values["labels_scored"], values["labels_shared"]) == (3, 2)
    frame = pd.DataFrame([{"method": "m", **values}, {"method": "m", **values}])
    table = summary_markdown(summarise(frame))
    assert "DSC shared" in table and "1.00 ± 0.00" in table
    # every label shared: the column would repeat DSC and is left out
    same = pair_metrics(image, image, (1, 1, 1), np.zeros((3, 12, 12, 12), np.float32),
                        fixed_labels, fixed_labels, moving_labels=fixed_labels)
    assert "DSC shared" not in summary_markdown(summarise(pd.DataFrame(
        [{"method": "m", **same}] * 2)))


# -- item 9: .gitignore --------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(),
                    reason="needs git and the repository")
def test_the_demo_folder_is_ignored_by_git():
    result = subprocess.run(["git", "check-ignore", "-q", "ddmr-demo/report.html"], cwd=REPO)
    assert result.returncode == 0


# -- item 24: the demo's interruption line ---------------------------------------------------

#: runs ``ddmr demo --quick`` with ``step`` in place of the brain experiment
SCRIPT = """
import sys, time
import ddmr.demo
from ddmr.cli import main
tiny = ddmr.demo.QUICK.replace(designs=("BL-N",), steps=5000, size=24, spacing=8.0,
                               unet={"encoder": [4, 8], "head": [4]},
                               profile={"val_pairs": 1, "val_every": 1000,
                                        "checkpoint_every": 1000})
ddmr.demo.QUICK = tiny

def evaluating(self):
    self.say("evaluating SyN on 2 pairs")
    time.sleep(120)

def training(self):
    from ddmr.data.cohort import sample_cohort_dir
    cohort = sample_cohort_dir()
    root = self.folder / "brain"
    data = self.prepare(cohort, root / "prepared", size=(24,) * 3, spacing=8.0,
                        split_file=str(cohort / "split.json"))
    self.train("BL-N", data, root / "runs" / "BL-N", tiny.steps)

ddmr.demo.Demo.brain = {"evaluating": evaluating, "training": training}[sys.argv[1]]
sys.exit(main(["demo", "--quick", "-o", sys.argv[2]]))
"""


def _interrupt(tmp_path: Path, step: str, wait_for: str, delay: float,
               sent: signal.Signals) -> tuple[int, str]:
    folder = tmp_path / f"demo-{step}"
    out, err = tmp_path / f"{step}.out", tmp_path / f"{step}.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", SCRIPT, step, str(folder)],
                                   stdout=stdout, stderr=stderr, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 300
            while wait_for not in out.read_text() and process.poll() is None:
                assert time.monotonic() < deadline, out.read_text()
                time.sleep(0.2)
            time.sleep(delay)
            os.kill(process.pid, sent)
            process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return process.returncode, err.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("sent, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_the_evaluation_says_how_to_continue(tmp_path, sent, status):
    """SIGTERM during the demo's evaluation ended it silently (no handler outside
    training). Now: exit 128 + the signal, one line naming the step and the command that
    continues the demo."""
    returncode, err = _interrupt(tmp_path, "evaluating", "evaluating SyN", 0.5, sent)
    assert returncode == status, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    folder = tmp_path / "demo-evaluating"
    assert lines[0] == (f"ddmr demo: interrupted by {sent.name} (evaluating SyN on 2 pairs); "
                        f"the finished steps are kept in {folder}; continue with: "
                        f"ddmr demo --quick -o {folder}")


@pytest.mark.slow
def test_a_signal_during_training_names_the_demo_command_not_a_train_resume(tmp_path):
    """Training's own line said "continue with: ddmr demo (BL-N) --resume", a command
    that does not exist; the demo now names its own."""
    returncode, err = _interrupt(tmp_path, "training", "training BL-N", 8.0, signal.SIGTERM)
    assert returncode == 143, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    folder = tmp_path / "demo-training"
    assert lines[0].startswith("ddmr demo: interrupted by SIGTERM")
    assert lines[0].endswith(f"continue with: ddmr demo --quick -o {folder}")
    assert "--resume" not in lines[0] and "(BL-N) " not in lines[0]


def test_register_scores_the_shared_labels_apart(tmp_path, capsys):
    """`ddmr register` of two CTs printed "DSC" averaged over the fixed map's 61 labels,
    30 of which the 31-label moving map lacks. Now summary.json names the labels scored
    and shared and gives DSC over the shared ones apart; the printed line says both."""
    from ddmr.io.images import load_labels, save_labels

    image = ROOT / "images" / "pycortex-s1.nii.gz"
    labels, geometry = load_labels(ROOT / "labels" / "pycortex-s1.nii.gz")
    fewer = tmp_path / "fewer.nii.gz"
    save_labels(fewer, np.where(labels >= 13, 0, labels).astype(np.uint8), geometry)
    out = tmp_path / "out"
    main(["register", "--fixed", str(image), "--moving", str(image), "--fixed-labels",
          str(ROOT / "labels" / "pycortex-s1.nii.gz"), "--moving-labels", str(fewer),
          "--model", "none", "--fast", "-o", str(out)])
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert metrics["labels_scored"] == list(range(1, 17))
    assert metrics["labels_shared"] == list(range(1, 13))
    assert metrics["dsc_shared"] == pytest.approx(1.0, abs=0.02)  # the same head
    assert metrics["dsc"] == pytest.approx(12 / 16 * metrics["dsc_shared"], abs=1e-6)
    assert (f"over the fixed map's 16 labels, {metrics['dsc_shared']:.3f} over the 12 both "
            "maps have") in capsys.readouterr().out
