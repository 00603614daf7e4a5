"""A model's card, typed: what it was trained as, on what, and how its inputs are made.

The card is stored as JSON in the model file's header (:mod:`ddmr.model.file`); this is
the one reader of its fields. It stays a read-only mapping of the stored fields (for
display and for copying into a new card), with typed properties for the fields that
change what ddmr does with the model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from ddmr.errors import ConfigError

logger = logging.getLogger(__name__)


class ModelCard(Mapping[str, Any]):
    """The card of a model file: ``card["field"]`` as stored, and typed properties."""

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self._fields = dict(fields)

    def __getitem__(self, key: str) -> Any:
        return self._fields[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"ModelCard(design={self.design_name!r}, input_size={self.input_size})"

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the stored fields."""
        return json.loads(json.dumps(self._fields))

    @property
    def design_fields(self) -> dict[str, Any] | None:
        """The design as stored (a :meth:`ddmr.designs.Design.to_dict`), or None."""
        design = self._fields.get("design")
        return design if isinstance(design, dict) else None

    @property
    def design(self):
        """The :class:`ddmr.designs.Design`, or None when the card has none."""
        from ddmr.designs import Design

        fields = self.design_fields
        return None if fields is None else Design.from_dict(fields)

    @property
    def design_name(self) -> str | None:
        return (self.design_fields or {}).get("name")

    @property
    def profile_fields(self) -> dict[str, Any] | None:
        """The training profile as stored (a ``TrainingProfile.to_dict()``), or None."""
        profile = self._fields.get("profile")
        return profile if isinstance(profile, dict) else None

    @property
    def prealigns(self) -> bool:
        """Whether the network was trained on pairs aligned by its own affine stage
        (``profile.prealign``): it then expects that stage in front of it."""
        return bool((self.profile_fields or {}).get("prealign"))

    @property
    def input_size(self) -> tuple[int, int, int]:
        """The network's grid (D, H, W); :class:`ConfigError` when the card has none."""
        size = self._fields.get("input_size")
        if not isinstance(size, list | tuple) or len(size) != 3:
            raise ConfigError(f"model card has no valid input_size (got {size!r})")
        return tuple(int(n) for n in size)

    @property
    def label_values(self) -> list[int]:
        return [int(v) for v in self._fields.get("label_values", [])]

    @property
    def expects(self) -> dict[str, Any]:
        """What input the model was trained on (``anatomy``, ``modality``,
        ``skull_stripped``, ``note``; ``foreground_ml``: the smallest and largest foreground
        of its training images, which training records); {} when the card does not say."""
        expects = self._fields.get("expects")
        return dict(expects) if isinstance(expects, dict) else {}

    @property
    def weights_sha256(self) -> str | None:
        return self._fields.get("sha256")

    @property
    def preparation(self):
        """The :class:`ddmr.prepare.recipe.PrepareOptions` the training data were made with
        (``preparation``: the text of their ``prepare.json``, or a plain options dict).
        Without it, ``input_size`` voxels of 1 mm in ``fit`` mode, with a warning."""
        from ddmr.prepare.recipe import PrepareOptions

        size = self.input_size
        text = self._fields.get("preparation")
        if not text:
            logger.warning("model card has no preparation options; assuming %s voxels of 1 "
                           "mm, resize 'fit'", "x".join(map(str, size)))
            return PrepareOptions(size=size)
        try:
            data = json.loads(text) if isinstance(text, str) else dict(text)
        except (json.JSONDecodeError, TypeError, ValueError):
            raise ConfigError("model card: 'preparation' is not valid JSON") from None
        data = data.get("options", data)
        known = {f.name for f in dataclasses.fields(PrepareOptions)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("size", "crop_labels", "split", "atlas_syn_iterations",
                    "atlas_affine_iterations"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        if values.get("ct_window") is not None:
            values["ct_window"] = tuple(float(v) for v in values["ct_window"])
        try:
            options = PrepareOptions(**values)
            options.validate()  # how an image is made, not a dataset
        except (TypeError, ConfigError) as error:
            raise ConfigError(f"model card: bad preparation options ({error})") from None
        return options

    def summary(self) -> dict[str, Any]:
        """What ``ddmr models`` shows: design, input size, validation loss, training
        steps and hours, evaluation scores (same-subject, and between people when the card
        has them) and the command that made it."""
        validation = self._fields.get("validation") or {}
        training = self._fields.get("training") or {}
        size = self._fields.get("input_size") or []
        design = self._fields.get("design")
        return {
            "design": (design.get("name", "?") if isinstance(design, dict)
                       else str(design) if design else "?"),
            "input_size": "x".join(str(n) for n in size) or "?",
            "parameters": self._fields.get("parameters"),
            "best_val_loss": validation.get("best_val_loss"),
            "validation": validation.get("last", {}),
            "steps": training.get("steps"),
            "hours": training.get("training_hours_total"),
            "evaluation": (self._fields.get("evaluation") or {}).get("methods", {}),
            "inter_subject": ((self._fields.get("evaluation") or {}).get("inter_subject")
                              or {}).get("methods", {}),
            "command": self._fields.get("command"),
            "created": self._fields.get("created"),
        }
