"""``ddmr demo``: the whole pipeline on bundled data, ending in a report.

``brain`` (default): prepare the bundled brain cohort, train designs with the CPU
profile, store test pairs from the held-out heads, evaluate the models against no
registration, SyN and SyNCC, run the statistics and write the report.

``transfer``: the paper's transfer-learning study, trained on synthetic CT phantoms and
tested on the two bundled real abdominal CTs (CT window -100..400 HU, cropped around the
liver): a model trained from scratch against the brain model fine-tuned whole or in two
steps (encoder frozen first), on pairs the augmentation layer makes from the real CTs.
The brain model comes from the same demo folder when it holds one, else a quick one is
trained first.

The folder (default ``./ddmr-demo``) is resumable: ``demo.json`` records each
experiment's settings, every step writes its output atomically and a later run reuses the
steps already done (so ``--experiment transfer`` after the brain demo reuses its model).
A folder that is not a demo folder is refused; ``overwrite`` starts from scratch; the same
experiment with other settings (``--quick`` vs full) is refused unless ``overwrite``.
One demo at a time holds the folder (a lock beside it): a second one is refused before it
deletes or writes anything.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddmr.errors import ConfigError, InputError, Interrupted

logger = logging.getLogger(__name__)

EXPERIMENTS = ("brain", "transfer")
INTER_NOTE = ("Every ordered pair of two different held-out heads, each on its own scanner "
              "header, registered in world space; there is no ground-truth field, so TRE is "
              "the distance between label centroids and DSC/HD95 compare each head's own "
              "labels. No overlays here: `ddmr register` writes one per pair.")
#: Hounsfield units kept by the transfer study's preparation (soft tissue and contrast).
CT_WINDOW = (-100.0, 400.0)
MARKER = "demo.json"
ALL_DESIGNS = ("BL-N", "BL-NS", "SG-ND", "SG-NSD", "UW-NSD", "UW-NSDH")


@dataclass(frozen=True)
class DemoSettings:
    """Every knob of the demo.

    designs, steps: designs trained on the brain cohort and their optimiser steps.
    size, spacing: prepared grid (size^3 voxels of ``spacing`` mm) = the network input.
    unet: overrides of the cpu profile's U-Net (e.g. ``{"encoder": [8, 8]}``).
    profile: further cpu-profile overrides (e.g. ``{"val_pairs": 1}``), applied last.
    n_pairs, pair_seed: stored test pairs. baselines: of syn, syncc, none, affine, engine.
    engine: also score each model refined by the registration engine (``<model>+engine``,
    what ``ddmr register --model MODEL`` does).
    ants_affine, ants_syn: ANTs iterations per level (None: ANTs defaults of ddmr).
    transfer_design, transfer_steps, phantoms, phantom_shape, phantom_spacing,
    ct_spacing: the transfer study. overlay_pairs: pairs drawn per section.
    """

    designs: tuple[str, ...] = ALL_DESIGNS
    steps: int = 40
    size: int = 64
    spacing: float = 3.0
    unet: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    n_pairs: int = 8
    pair_seed: int = 7
    baselines: tuple[str, ...] = ("syn", "syncc", "none")
    engine: bool = True
    ants_affine: tuple[int, ...] | None = (200, 100, 50)
    ants_syn: tuple[int, ...] | None = (40, 20, 0)
    transfer_design: str = "UW-NSD"
    transfer_steps: int = 30
    phantoms: int = 10
    phantom_shape: tuple[int, int, int] = (96, 96, 96)
    phantom_spacing: tuple[float, float, float] = (4.0, 4.0, 3.0)
    ct_spacing: float = 3.0
    overlay_pairs: int = 2
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def replace(self, **changes: Any) -> DemoSettings:
        return dataclasses.replace(self, **changes)


#: The shipped model's recipe (configs/brain-t1-cpu-hm-drop.yaml) as demo overrides:
#: 48^3 network input, Adam 1e-3 dropped to 1e-4 after step 200, validation every 50.
RECIPE_PROFILE: dict[str, Any] = {"input_size": [48, 48, 48], "learning_rate": 1e-3,
                                  "lr_drop_steps": [200], "val_every": 50, "val_pairs": 4,
                                  "checkpoint_every": 25}
RECIPE_UNET: dict[str, Any] = {"input_features": "demons", "match_histograms": True}
#: ``ddmr demo``: the paper study (docs/paper-study.md): all six designs with the shipped
#: model's recipe for 400 steps each (its validation Dice levels off by step 200 of 2000)
#: and the three transfer runs for 200 steps each; about 1.5 hours on a busy 2-core machine.
FULL = DemoSettings(steps=400, transfer_steps=200, profile=RECIPE_PROFILE, unet=RECIPE_UNET)
#: ``ddmr demo --quick``: a few minutes on 2 cores.
QUICK = DemoSettings(designs=("BL-N", "UW-NSD"), steps=15, n_pairs=4,
                     ants_affine=(50, 25), ants_syn=(10, 5, 0), transfer_steps=15,
                     phantoms=8, overlay_pairs=1)


Progress = Callable[[str], None]


def _ants_settings(settings: DemoSettings) -> dict[str, Any]:
    from ddmr.baselines.ants import default_settings

    out = {}
    for method in ("syn", "syncc"):
        base = default_settings(method)
        if settings.ants_affine is not None:
            levels = len(settings.ants_affine)
            base = dataclasses.replace(
                base, affine_iterations=tuple(settings.ants_affine),
                affine_shrink_factors=tuple(2 ** k for k in reversed(range(levels))),
                affine_smoothing_sigmas=tuple(float(k) for k in reversed(range(levels))))
        if settings.ants_syn is not None:
            base = dataclasses.replace(base, syn_iterations=tuple(settings.ants_syn))
        out[method] = base
    return out


def _profile(settings: DemoSettings, steps: int):
    from ddmr.train.profiles import get_profile

    every = max(1, steps // 2)  # two validations: each re-makes its pairs
    return get_profile("cpu", overrides={
        "input_size": [settings.size] * 3, "max_steps": steps, "val_every": every,
        "checkpoint_every": every, "seed": settings.seed, "unet": dict(settings.unet) or None,
        **settings.profile,
    })


class Demo:
    """One demo folder; :meth:`run` does an experiment, reusing finished steps."""

    def __init__(self, folder: str | Path, settings: DemoSettings,
                 progress: Progress | None = None, overwrite: bool = False,
                 command: str | None = None) -> None:
        """``command``: what runs this demo again (without ``--overwrite``), named by the
        line that an interruption prints."""
        self.folder = Path(folder)
        self.settings = settings
        self.command = command
        self._progress = progress or (lambda text: logger.info("%s", text))
        self._start = time.perf_counter()
        self._doing = "starting"
        self._overwrite = overwrite
        self._check_folder()
        self.folder.mkdir(parents=True, exist_ok=True)  # its steps can run one by one

    # -- folder and bookkeeping ---------------------------------------------------------
    def _check_folder(self) -> None:
        """Refuse a file, or a folder that is neither empty nor a demo's (unless
        ``overwrite``); changes nothing."""
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"{self.folder}: exists and is not a folder")
        if (not self._overwrite and self.folder.is_dir() and any(self.folder.iterdir())
                and not (self.folder / MARKER).is_file()):
            raise InputError(f"{self.folder}: exists, is not empty and is not a demo "
                             "folder; choose another -o or pass --overwrite")

    @contextmanager
    def _opened(self) -> Iterator[None]:
        """Hold the demo folder for a whole run (:func:`ddmr.train.resume.run_lock`: a
        ``.NAME.lock`` file beside the folder, not one of the run folders' locks that its
        trainings take): a second demo of the folder is refused in one line before it
        deletes or writes anything. Under the lock, check the folder again, then clear it
        (``overwrite``, once) and make it."""
        from ddmr.train.resume import run_lock

        with run_lock(self.folder):
            self._check_folder()
            if self._overwrite and self.folder.is_dir():
                shutil.rmtree(self.folder)
            self._overwrite = False  # a later run of this demo reuses what this one did
            self.folder.mkdir(parents=True, exist_ok=True)
            yield

    def _record(self) -> dict[str, Any]:
        marker = self.folder / MARKER
        return json.loads(marker.read_text()) if marker.is_file() else {"experiments": {}}

    def _claim(self, experiment: str) -> None:
        from ddmr import __version__
        from ddmr.io.files import atomic_path

        record = self._record()
        mine = self.settings.to_dict()
        previous = record["experiments"].get(experiment)
        if previous is not None and previous != mine:
            raise ConfigError(f"{self.folder}: the {experiment} demo there was made with other "
                              "settings (--quick or not); pass --overwrite or choose another -o")
        record["experiments"][experiment] = mine
        record["ddmr"] = __version__
        with atomic_path(self.folder / MARKER) as temporary:
            temporary.write_text(json.dumps(record, indent=2) + "\n")

    def say(self, text: str) -> None:
        self._doing = text
        self._progress(f"[{time.perf_counter() - self._start:6.0f} s] {text}")

    # -- interruptions ----------------------------------------------------------------------
    def _continue_with(self) -> str:
        again = self.command or f"the same demo on {self.folder} again"
        return (f"the finished steps are kept in {self.folder}; continue with: {again}")

    def _interrupted(self, stop: Interrupted) -> Interrupted:
        """The demo's one line for an interruption: what training said it kept (its own
        resume command is not the demo's), or the step under way; how to continue."""
        kept = str(stop).partition("; continue with:")[0]
        return Interrupted(f"{kept} ({self._doing}); {self._continue_with()}",
                           stop.signal_number)

    @contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM end the demo with :class:`Interrupted` (one line, exit
        status 128 + the signal); training installs its own handlers over these, which
        finish the step under way and save a checkpoint first."""
        def stop(number: int, frame: Any) -> None:
            raise Interrupted(f"interrupted by {signal.Signals(number).name}", number)

        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only
            return
        previous = {number: signal.signal(number, stop)
                    for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    # -- steps ----------------------------------------------------------------------------
    def prepare(self, source: Path, outdir: Path, **options: Any) -> Path:
        from ddmr.prepare.dataset import prepare_dataset
        from ddmr.prepare.recipe import PrepareOptions

        if (outdir / "prepare.json").is_file():
            self.say(f"prepared data: reused {outdir}")
            return outdir
        self.say(f"preparing {source} -> {outdir}")
        prepare_dataset(source, outdir, PrepareOptions(**options), overwrite=True,
                        progress=False)
        return outdir

    def train(self, design: str, data: Path, rundir: Path, steps: int,
              source_model: Path | None = None, strategy: str | None = None) -> Path:
        from ddmr.designs import get_design
        from ddmr.train.finetune import finetune
        from ddmr.train.run import RunOptions, fit

        model = rundir / "model.safetensors"
        if model.is_file():
            self.say(f"{rundir.name}: reused {model}")
            return model
        resume = (rundir / "checkpoints" / "last.ckpt").is_file()
        options = RunOptions(rundir, resume=resume, overwrite=not resume, progress_bar=False,
                             command=f"ddmr demo ({rundir.name})")
        what = f"fine-tuning ({strategy})" if source_model else "training"
        self.say(f"{rundir.name}: {what} {design} for {steps} steps"
                 + (" (resumed)" if resume else ""))
        started = time.perf_counter()
        if source_model is None:
            fit(get_design(design), _profile(self.settings, steps), data, options)
        else:
            frozen = max(1, steps // 2) if strategy == "two-step" else None
            every = max(1, steps // 2)  # two validations: each re-makes its pairs
            overrides = {"max_steps": steps, "val_every": every, "checkpoint_every": every,
                         **{k: v for k, v in self.settings.profile.items()
                            if k not in ("unet", "augmentation", "input_size")}}
            finetune(source_model, data, options, strategy=strategy or "full",
                     design_name=design, frozen_steps=frozen, overrides=overrides)
        self.say(f"{rundir.name}: done in {time.perf_counter() - started:.0f} s")
        return model

    def pairs(self, data: Path, outdir: Path, pairing: str = "same-subject") -> Path:
        """Stored test pairs of the held-out subjects: ``n_pairs`` made by the augmentation
        layer (``same-subject``), or every ordered pair of two of them (``inter-subject``)."""
        from ddmr.evaluate.inter import MODE
        from ddmr.evaluate.pairs import make_pairs

        if (outdir / "pairs.json").is_file():
            self.say(f"test pairs: reused {outdir}")
            return outdir
        what = ("every ordered pair of held-out subjects" if pairing == MODE else
                f"{self.settings.n_pairs} test pairs from held-out subjects")
        self.say(f"storing {what}")
        make_pairs(data, outdir, self.settings.n_pairs, self.settings.pair_seed, "test",
                   overwrite=True, progress=False, pairing=pairing)
        return outdir

    def evaluate(self, pairs: Path, models: dict[str, Path], outdir: Path) -> Path:
        import pandas as pd

        from ddmr.evaluate.engine_method import engine_method_name, split_engine_name
        from ddmr.evaluate.pairs import PairSet
        from ddmr.evaluate.runner import baseline_notes, evaluate, write_results

        if (outdir / "per_pair.csv").is_file():
            self.say(f"evaluation: reused {outdir}")
            if not (outdir / "stats_tre.md").is_file():
                write_statistics(outdir)
            return outdir
        engine = self.settings.engine
        names = [n for m in models
                 for n in ([m, engine_method_name(m)] if engine else [m])]
        names += list(self.settings.baselines)
        self.say(f"evaluating {', '.join(names)} on {len(PairSet(pairs))} pairs")
        ants = _ants_settings(self.settings)
        frames = []
        for name, path in models.items():
            frame = evaluate(pairs, [path], (), progress=False, engine=engine)
            refined = frame["method"].map(lambda method: split_engine_name(method)[1])
            frames.append(frame.assign(method=refined.map(
                lambda r, name=name: engine_method_name(name) if r else name)))
        if self.settings.baselines:
            frames.append(evaluate(pairs, [], self.settings.baselines, ants, progress=False))
        results = pd.concat(frames, ignore_index=True)
        n = results["pair"].nunique()
        write_results(results, outdir, overwrite=True,
                      title=f"Evaluation on {pairs.resolve()} ({n} pairs)",
                      baselines=baseline_notes(pairs, self.settings.baselines, ants))
        write_statistics(outdir)
        return outdir

    # -- experiments ----------------------------------------------------------------------
    def brain(self) -> None:
        from ddmr.data.cohort import sample_cohort_dir

        self._claim("brain")
        s, root = self.settings, self.folder / "brain"
        cohort = sample_cohort_dir()
        data = self.prepare(cohort, root / "prepared", size=(s.size,) * 3, spacing=s.spacing,
                            split_file=str(cohort / "split.json"), seed=s.seed)
        models = {d: self.train(d, data, root / "runs" / d, s.steps) for d in s.designs}
        pairs = self.pairs(data, root / "pairs")
        self.evaluate(pairs, models, root / "results")
        from ddmr.evaluate.inter import MODE

        self.evaluate(self.pairs(data, root / "pairs-inter", MODE), models,
                      root / "results-inter")

    def brain_model(self) -> Path:
        """The brain model the transfer study starts from (reused or trained quickly)."""
        s = self.settings
        model = self.folder / "brain" / "runs" / s.transfer_design / "model.safetensors"
        if model.is_file():
            self.say(f"source model: reused the brain demo's {model}")
            return model
        from ddmr.data.cohort import sample_cohort_dir

        cohort = sample_cohort_dir()
        root = self.folder / "transfer" / "brain-source"
        data = self.prepare(cohort, root / "prepared", size=(s.size,) * 3, spacing=s.spacing,
                            split_file=str(cohort / "split.json"), seed=s.seed)
        return self.train(s.transfer_design, data, root / "run", s.transfer_steps)

    def transfer(self) -> None:
        from ddmr.data.phantoms import write_phantom_cohort
        from ddmr.io.files import atomic_directory

        self._claim("transfer")
        s, root = self.settings, self.folder / "transfer"
        source = self.brain_model()
        phantoms = root / "phantoms"
        if not (phantoms / "README.txt").is_file():
            self.say(f"writing {s.phantoms} synthetic CT phantoms")
            with atomic_directory(phantoms) as temporary:
                write_phantom_cohort(temporary, s.phantoms, seed=s.seed,
                                     shape=s.phantom_shape, spacing=s.phantom_spacing)
        data = self.prepare(phantoms, root / "prepared", size=(s.size,) * 3,
                            spacing=s.ct_spacing, ct_window=CT_WINDOW, crop_labels=(1,),
                            seed=s.seed)
        design, steps, runs = s.transfer_design, s.transfer_steps, root / "runs"
        models = {
            "from scratch": self.train(design, data, runs / "scratch", steps),
            "fine-tuned (full)": self.train(design, data, runs / "full", steps, source, "full"),
            "fine-tuned (two-step)": self.train(design, data, runs / "two-step", steps, source,
                                                "two-step"),
        }
        pairs = self.pairs(self.real_ct(root / "prepared-ct"), root / "pairs")
        self.evaluate(pairs, models, root / "results")

    def real_ct(self, outdir: Path) -> Path:
        """The bundled real abdominal CTs prepared as the phantoms are (CT window, crop
        around the liver), their labels merged onto the phantoms' liver and vessels: the
        transfer study's test subjects."""
        from ddmr.data.cohort import sample_ct_dir

        s, ct = self.settings, sample_ct_dir()
        return self.prepare(ct, outdir, size=(s.size,) * 3, spacing=s.ct_spacing,
                            ct_window=CT_WINDOW, crop_labels=(1,),
                            merge_labels=str(ct / "liver-labels.json"),
                            split_file=str(ct / "split.json"), seed=s.seed)

    def run(self, experiment: str = "brain") -> Path:
        """Run ``experiment`` (reusing finished steps), then write the report of everything
        the folder holds; returns the report's path."""
        if experiment not in EXPERIMENTS:
            raise ConfigError(f"--experiment {experiment}: choose brain or transfer")
        try:
            with self._opened(), self._stop_on_signals():
                getattr(self, experiment)()
                return self.report()
        except Interrupted as stop:
            raise self._interrupted(stop) from None

    def report(self) -> Path:
        from ddmr.report import ReportOptions, ResultsSection, build_report

        record = self._record()["experiments"]
        sections, runs = [], []
        brain, transfer = self.folder / "brain", self.folder / "transfer"
        if (brain / "results" / "per_pair.csv").is_file():
            designs = record.get("brain", {}).get("designs", [])
            sections.append(ResultsSection(
                brain / "results", "Brain MRI: designs against ANTs (bundled cohort)",
                pairs=brain / "pairs",
                models={d: brain / "runs" / d / "model.safetensors" for d in designs},
                notes=[_brain_note(record.get("brain", {}))],
                ants_settings=_recorded_ants(record.get("brain"))))
            runs += [brain / "runs" / d for d in designs]
        if (brain / "results-inter" / "per_pair.csv").is_file():
            sections.append(ResultsSection(
                brain / "results-inter", "Brain MRI between people (held-out heads)",
                pairs=brain / "pairs-inter", overlays=False,
                notes=[INTER_NOTE], ants_settings=_recorded_ants(record.get("brain"))))
        if (transfer / "results" / "per_pair.csv").is_file():
            t = transfer / "runs"
            sections.append(ResultsSection(
                transfer / "results", "Transfer learning: brain MRI to abdominal CT",
                pairs=transfer / "pairs",
                models={"from scratch": t / "scratch" / "model.safetensors",
                        "fine-tuned (full)": t / "full" / "model.safetensors",
                        "fine-tuned (two-step)": t / "two-step" / "model.safetensors"},
                notes=[_transfer_note(record.get("transfer", {}))],
                ants_settings=_recorded_ants(record.get("transfer"))))
            runs += [t / "scratch", t / "full", t / "two-step"]
        self.say("writing the report")
        overlay = max(r.get("overlay_pairs", 1) for r in record.values()) if record else 1
        options = ReportOptions(
            overlay_pairs=overlay, ants_settings=_ants_settings(self.settings),
            title="DDMR demo report",
            introduction=[
                "Made by `ddmr demo` on a CPU with the small `cpu` training profile and few "
                "training steps. These networks are demonstrations of the training "
                "pipeline and have barely started to learn: the cpu profile's affine stage "
                "does most of their work. `<model>+engine` rows are what `ddmr register "
                "--model MODEL` does: the network's field refined by the registration engine "
                "at the images' own resolution (`ddmr register` without `--model` runs the "
                "engine from the affine part alone); compare those with ANTs (`ddmr models` "
                "shows the "
                "shipped model, trained for longer). Every method is scored by the same "
                "code on the same stored pairs."])
        html, _ = build_report(self.folder / "report.html", sections,
                               [r for r in runs if r.is_dir()], options)
        return html


def _recorded_ants(recorded: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ANTs settings an experiment of this folder was evaluated with."""
    if not recorded:
        return None
    return _ants_settings(DemoSettings(
        ants_affine=tuple(recorded["ants_affine"]) if recorded.get("ants_affine") else None,
        ants_syn=tuple(recorded["ants_syn"]) if recorded.get("ants_syn") else None))


def _brain_note(settings: dict[str, Any]) -> str:
    return (f"Bundled brain cohort prepared to {settings.get('size')}^3 voxels of "
            f"{settings.get('spacing')} mm; designs {', '.join(settings.get('designs', []))} "
            f"trained for {settings.get('steps')} steps each with the cpu profile; "
            f"{settings.get('n_pairs')} stored pairs made by the augmentation layer from the "
            "held-out heads.")


def _transfer_note(settings: dict[str, Any]) -> str:
    return (f"Trained on {settings.get('phantoms')} SYNTHETIC CT phantoms (not patient "
            "data); tested on pairs the augmentation layer made from the two bundled REAL "
            "abdominal CTs (TotalSegmentator's test files, Apache-2.0; their labels are "
            "TotalSegmentator's automatic output: liver, and the portal/splenic vein and "
            "inferior vena cava as 'vessels'). CT window -100..400 HU, cropped around the "
            f"liver, resized to {settings.get('size')}^3. "
            f"Design {settings.get('transfer_design')}, "
            f"{settings.get('transfer_steps')} steps each: from scratch; the brain model "
            "fine-tuned whole (full); and in two steps (input and encoder frozen for the "
            "first half, then everything).")


def write_statistics(results: Path, metric: str = "tre", alpha: float = 0.05) -> Path | None:
    """``stats_<metric>.md`` (Tukey HSD, one-sided Mann-Whitney U with Benjamini-Hochberg)
    in the results folder, as ``ddmr stats`` writes it; None when the metric is absent."""
    import pandas as pd

    from ddmr import stats

    frame = pd.read_csv(results / "per_pair.csv")
    if metric not in frame or not frame[metric].notna().any():
        return None
    stats.write_statistics(frame, results, metric, alpha,
                           _contrasts(list(dict.fromkeys(frame["method"]))))
    return results / f"stats_{metric}.md"


def _contrasts(methods: Sequence[str]) -> list:
    """The default contrasts; for the transfer study, fine-tuning against from scratch."""
    from ddmr import stats

    contrasts = list(stats.default_contrasts(methods))
    if "from scratch" in methods:
        contrasts += [stats.Contrast(m, "from scratch") for m in methods
                      if m.startswith("fine-tuned")]
        if "fine-tuned (full)" in methods and "fine-tuned (two-step)" in methods:
            contrasts.append(stats.Contrast("fine-tuned (two-step)", "fine-tuned (full)"))
    return contrasts
