"""Training profiles: network size, input size, schedule. ``paper`` is the paper's set-up
for a GPU; ``cpu`` is small enough to learn on two CPU cores. A YAML file given with
``--config`` overrides any field (nested ``unet:`` and ``augmentation:`` mappings too).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddmr.augment.config import AugmentationConfig
from ddmr.errors import ConfigError, InputError
from ddmr.nn.unet import UNetConfig

#: The kinds of training pairs (:attr:`TrainingProfile.pairing`).
PAIRINGS = ("same-subject", "inter-subject", "mixed")


@dataclass(frozen=True)
class TrainingProfile:
    """Everything about a training run except the design and the data.

    input_size: the network's grid (D, H, W); prepared images are resized to it.
    batch_size, accumulate: pairs per forward pass, passes per optimiser step.
    val_every: optimiser steps between validations (and plateau checks).
    val_pairs: fixed, seeded validation pairs made per validation subject.
    plateau_patience: validations without improvement before the learning rate / 10.
    early_stopping: validations without improvement before stopping (None: never).
    checkpoint_every: optimiser steps between 'last' checkpoints (for --resume).
    prealign: align each pair affinely first (:func:`ddmr.model.align.align_affine`)
        so that the network learns only the residual; registration then does the same.
    lr_drop_steps: optimiser steps after which the learning rate is multiplied by
        ``plateau_factor`` once each (a fast start, then a finer rate in the same run), on
        top of the plateau schedule.
    pairing: the training pairs. ``same-subject`` (the paper's): a subject and an
        augmented copy of itself, with the known field. ``inter-subject``: a subject and
        another training subject, each augmented (no known field, so no supervised term).
        ``mixed``: each step draws one of the two with equal odds. Validation pairs stay
        same-subject (their field error needs the known field).
    synthesis: the odds that a training step's images are drawn from the subjects' label
        maps (:mod:`ddmr.augment.synthesis`: a random intensity per label, noise, blur,
        bias) instead of read; both images of a pair share the labels' intensities.
        Validation pairs stay real.
    engine_targets: amortised optimisation: the supervised term of inter-subject pairs
        targets the registration engine's own field between the two training subjects
        (:mod:`ddmr.train.engine_targets`, computed when training starts), carried through
        the moving subject's augmentation. Needs pairs between subjects and a supervised
        weight.
    """

    name: str
    unet: UNetConfig
    input_size: tuple[int, int, int]
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    learning_rate: float = 1e-3
    batch_size: int = 1
    accumulate: int = 8
    max_steps: int = 100_000
    val_every: int = 100
    val_pairs: int = 2
    plateau_patience: int = 10
    plateau_factor: float = 0.1
    early_stopping: int | None = None
    checkpoint_every: int = 50
    precision: str = "32-true"
    num_workers: int = 0
    seed: int = 0
    prealign: bool = False
    lr_drop_steps: tuple[int, ...] = ()
    pairing: str = "same-subject"
    synthesis: float = 0.0
    engine_targets: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.synthesis, int | float) and 0 <= self.synthesis <= 1):
            raise ConfigError(f"synthesis must be odds between 0 and 1, got {self.synthesis!r}")
        if self.engine_targets and self.pairing == "same-subject":
            raise ConfigError("engine_targets are fields between two subjects: they need "
                              "pairing inter-subject or mixed")
        if self.pairing not in PAIRINGS:
            raise ConfigError(f"pairing {self.pairing!r}: choose {', '.join(PAIRINGS)}")
        steps = tuple(self.lr_drop_steps)
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in steps):
            raise ConfigError(f"lr_drop_steps must be positive step counts, got {steps}")
        object.__setattr__(self, "lr_drop_steps", tuple(sorted(steps)))
        size = tuple(self.input_size)
        if len(size) != 3 or any(isinstance(n, bool) or not isinstance(n, int) or n < 2
                                 for n in size):
            raise ConfigError(f"input_size must be three voxel counts of at least 2, got "
                              f"{list(size)}")
        object.__setattr__(self, "input_size", size)
        from ddmr.model.file import input_size_problem

        problem = input_size_problem(size, self.unet, self.prealign)
        if problem is not None:  # else training fails late, in the network or affine stage
            raise ConfigError(problem)
        for name in ("batch_size", "accumulate", "val_every", "val_pairs", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive whole number, got {value!r}")
        if not (isinstance(self.learning_rate, int | float)
                and math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"learning_rate must be a positive number, got "
                              f"{self.learning_rate!r}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["unet"] = self.unet.to_dict()
        data["augmentation"] = self.augmentation.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingProfile:
        data = dict(data)
        data["unet"] = UNetConfig.from_dict(data["unet"])
        data["augmentation"] = AugmentationConfig.from_dict(data["augmentation"])
        data["input_size"] = tuple(data["input_size"])
        data["lr_drop_steps"] = tuple(data.get("lr_drop_steps") or ())
        return cls(**data)

    def replace(self, **changes: Any) -> TrainingProfile:
        return dataclasses.replace(self, **changes)


PROFILES: dict[str, TrainingProfile] = {
    "paper": TrainingProfile("paper", UNetConfig(), (128, 128, 128), precision="16-mixed"),
    "cpu": TrainingProfile(
        "cpu",
        UNetConfig(encoder=(16, 32, 32, 32), head=(16,), flow_resolution="half"),
        (64, 64, 64),
        accumulate=1,
        val_every=50,
        max_steps=2000,
        prealign=True,
    ),
}


def get_profile(name: str, config_file: str | Path | None = None,
                overrides: dict[str, Any] | None = None) -> TrainingProfile:
    """The named profile with a YAML file's fields and then ``overrides`` applied."""
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    data = PROFILES[name].to_dict()
    changes: dict[str, Any] = {}
    if config_file is not None:
        import yaml

        path = Path(config_file)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise InputError(f"{path}: cannot read the configuration ({error})") from None
        if not isinstance(loaded, dict):
            raise InputError(f"{path}: the configuration must be a mapping of fields")
        changes.update(loaded)
    changes.update({k: v for k, v in (overrides or {}).items() if v is not None})
    for key, value in changes.items():
        if key not in data:
            raise ConfigError(f"unknown profile field {key!r}")
        if key in ("unet", "augmentation"):
            if not isinstance(value, dict):
                raise ConfigError(f"profile field {key!r} must be a mapping")
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    try:
        return TrainingProfile.from_dict(data)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"invalid profile: {error}") from None
