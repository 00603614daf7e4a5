"""The Lightning module: synthetic pairs on the training device, the design's loss,
fixed seeded validation pairs, plateau scheduling and logging of every term and weight."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from ddmr.augment.layer import AugmentationLayer, AugmentedPair
from ddmr.augment.synthesis import label_intensities, synthesise
from ddmr.designs import Design
from ddmr.errors import ConfigError, DivergenceError
from ddmr.losses import DesignLoss, dice_score, one_hot
from ddmr.model.predictor import own_alignment
from ddmr.nn import UNet
from ddmr.spatial.warp import warp_image, warp_labels
from ddmr.train.engine_targets import through_augmentation
from ddmr.train.profiles import TrainingProfile

VAL_SEED_OFFSET = 1_000_003


def field_error_mm2(prediction: torch.Tensor, truth: torch.Tensor, spacing: Sequence[float],
                    squared: bool = True) -> torch.Tensor:
    """Mean squared end-point error (mm^2) of voxel fields (B, 3, D, H, W) on a grid of
    ``spacing`` mm; with ``squared=False`` the mean end-point error in mm."""
    scale = torch.as_tensor(spacing, dtype=prediction.dtype, device=prediction.device)
    error = ((prediction - truth) * scale.view(1, 3, 1, 1, 1)).square().sum(dim=1)
    return error.mean() if squared else error.sqrt().mean()


def between_subjects(fixed: AugmentedPair, moving: AugmentedPair) -> AugmentedPair:
    """A pair of two subjects: ``fixed``'s fixed image and labels, ``moving``'s moving image
    and labels (each made by the augmentation layer from its own subject, on the same
    grid). No field relates them: ``displacement`` and ``generating_displacement`` are NaN,
    so no term that needs the known field is computed."""
    if fixed.fixed.shape != moving.moving.shape:
        raise ValueError(f"subjects on different grids: {tuple(fixed.fixed.shape)} and "
                         f"{tuple(moving.moving.shape)}")
    unknown = torch.full_like(fixed.displacement, float("nan"))
    return dataclasses.replace(fixed, moving=moving.moving, moving_labels=moving.moving_labels,
                               displacement=unknown, generating_displacement=unknown)


def synthesised(batch: dict[str, Any], table: torch.Tensor | None,
                generator: torch.Generator) -> dict[str, Any]:
    """``batch`` with its images drawn from its label maps through the intensity lookup
    ``table`` (:func:`ddmr.augment.synthesis.synthesise`); unchanged when ``table`` is
    None."""
    if table is None:
        return batch
    if batch.get("labels") is None:
        raise ConfigError("synthesis draws images from label maps, and the data has none")
    return {**batch, "image": synthesise(batch["labels"], table, generator)}


class RegistrationModule(L.LightningModule):
    """Trains a :class:`~ddmr.nn.UNet` on pairs made by the augmentation layer.

    design, profile: dicts (``Design.to_dict()``, ``TrainingProfile.to_dict()``), so that
    checkpoints hold only plain data. label_values: the label values of the data (0 first),
    the channels of the one-hot maps used by segmentation-guided designs.
    Batches are dicts from :class:`ddmr.data.PreparedDataModule`.
    """

    def __init__(self, design: dict[str, Any], profile: dict[str, Any],
                 label_values: list[int], seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.design = Design.from_dict(design)
        self.profile = TrainingProfile.from_dict(profile)
        self.label_values = [int(v) for v in label_values]
        if self.design.needs_segmentations and len(self.label_values) < 2:
            raise ConfigError(f"design {self.design.name} needs label maps with at least one "
                              "foreground label")
        if self.profile.synthesis > 0 and len(self.label_values) < 2:
            raise ConfigError("synthesis draws images from label maps: the data needs label "
                              "maps with at least one foreground label")
        if self.profile.engine_targets and self.design.supervised_weight <= 0:
            raise ConfigError("engine_targets are the supervised term's targets: give a "
                              "supervised weight (--supervised-weight)")
        if (self.profile.pairing == "inter-subject" and self.design.supervised_weight > 0
                and not self.profile.engine_targets):
            raise ConfigError("inter-subject pairs have no known field: the supervised term "
                              "needs supervised_weight 0, pairing mixed or engine_targets")
        self.network = UNet(self.profile.unet)
        self.loss = DesignLoss(self.design)
        self.augmentation = AugmentationLayer(self.profile.augmentation,
                                              output_shape=self.profile.input_size)
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._generator_state: torch.Tensor | None = None
        self._plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._plateau_state: dict[str, Any] | None = None
        self._val_outputs: list[dict[str, float]] = []
        self._engine_fields: dict[tuple[str, str], torch.Tensor] | None = None
        self._elapsed_before = 0.0  # training seconds of earlier (resumed) segments
        self._segment_start: float | None = None

    def elapsed_seconds(self) -> float:
        """Wall-clock training time over all segments of the run (resumes included)."""
        if self._segment_start is None:
            return self._elapsed_before
        return self._elapsed_before + time.monotonic() - self._segment_start

    def on_train_start(self) -> None:
        self._segment_start = time.monotonic()

    def on_fit_start(self) -> None:
        if self.profile.engine_targets and self._engine_fields is None:
            self._engine_fields = self._compute_engine_fields()

    def _compute_engine_fields(self) -> dict[tuple[str, str], torch.Tensor]:
        """The engine's fields between every two training subjects on the network's grid
        (:func:`ddmr.train.engine_targets.engine_fields`)."""
        from ddmr.prepare.recipe import preprocess
        from ddmr.train.engine_targets import engine_fields

        dataset = self.trainer.datamodule.datasets["train"]
        images, spacing = {}, None
        for index in range(len(dataset)):
            item = dataset[index]
            image, _, spacing = preprocess(item["image"][None], item["spacing"].tolist(),
                                           self.profile.input_size)
            images[item["id"]] = image[0, 0]
        return engine_fields(images, spacing)

    # -- pairs and losses ----------------------------------------------------------------
    def _train_generator(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed + 7919 * self.global_rank)
            if self._generator_state is not None:
                self._generator.set_state(self._generator_state)
        return self._generator

    def augment_pair(self, batch: dict[str, Any], generator: torch.Generator) -> AugmentedPair:
        """A synthetic pair from the augmentation layer (before any pre-alignment)."""
        labels = batch.get("labels")
        if self.design.needs_segmentations and labels is None:
            raise ConfigError(f"design {self.design.name} is segmentation-guided but the data "
                              "has no label maps")
        spacing = batch["spacing"][0].tolist()
        return self.augmentation(batch["image"], labels, spacing, generator=generator)

    def prealign(self, pair: AugmentedPair) -> AugmentedPair:
        """With ``profile.prealign``: the pair with its moving image (and labels) aligned
        affinely to the fixed one and ``displacement`` the residual ground truth."""
        if not self.profile.prealign:
            return pair
        alignment = own_alignment(pair.fixed, pair.moving, pair.spacing)
        field = alignment.displacement(pair.fixed.shape[2:])
        labels = pair.moving_labels
        return dataclasses.replace(
            pair, moving=warp_image(pair.moving, field),
            moving_labels=None if labels is None else warp_labels(
                labels, field, self.profile.augmentation.label_method),
            displacement=alignment.residual(pair.displacement))

    def make_pair(self, batch: dict[str, Any], generator: torch.Generator) -> AugmentedPair:
        """The training pair: augmented, then pre-aligned when the profile says so; with
        ``profile.pairing`` inter-subject (or mixed, half the time) the moving image is
        another training subject's, augmented in its turn (:func:`between_subjects`). With
        ``profile.synthesis``, at those odds both images are drawn from the subjects' label
        maps with one intensity per label (:func:`synthesised`). With
        ``profile.engine_targets``, an inter-subject pair's ``displacement`` is the
        engine's field carried through the moving subject's augmentation."""
        table = None
        if self.profile.synthesis > 0 and bool(
                torch.rand(1, generator=generator) < self.profile.synthesis):
            table = label_intensities(self.label_values, generator)
        pair = self.augment_pair(synthesised(batch, table, generator), generator)
        pairing = self.profile.pairing
        if pairing == "inter-subject" or (
                pairing == "mixed" and bool(torch.rand(1, generator=generator) < 0.5)):
            partner = synthesised(self._partner(batch, generator), table, generator)
            moving = self.augment_pair(partner, generator)
            pair = between_subjects(pair, moving)
            if self._engine_fields is not None:
                field = torch.stack([self._engine_fields[f, m] for f, m in
                                     zip(batch["id"], partner["id"], strict=True)])
                pair = dataclasses.replace(pair, displacement=through_augmentation(
                    field.to(pair.fixed), moving.displacement))
        return self.prealign(pair)

    def _partner(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        """A batch of other training subjects, one per subject of ``batch``, drawn with
        ``generator``."""
        from torch.utils.data import default_collate

        dataset = self.trainer.datamodule.datasets["train"]
        if len(dataset) < 2:
            raise ConfigError(f"pairing {self.profile.pairing} needs two training subjects; "
                              f"the data has {len(dataset)}")
        items = []
        for ident in batch["id"]:
            own = dataset.ids.index(ident)
            other = int(torch.randint(len(dataset) - 1, (1,), generator=generator))
            items.append(dataset[other + (other >= own)])
        return default_collate(items)

    def pair_loss(self, pair: AugmentedPair) -> tuple[torch.Tensor, dict[str, torch.Tensor],
                                                       torch.Tensor]:
        """Predict, warp and score one pair: (total, unweighted terms, displacement)."""
        displacement = self.network(pair.fixed, pair.moving)
        warped = warp_image(pair.moving, displacement)
        fixed_oh = warped_oh = None
        if self.design.needs_segmentations:
            fixed_oh = one_hot(pair.fixed_labels, self.label_values)
            warped_oh = warp_image(one_hot(pair.moving_labels, self.label_values), displacement)
        total, terms = self.loss(pair.fixed, warped, displacement, fixed_oh, warped_oh,
                                 spacing=pair.spacing)
        if self.design.supervised_weight > 0 and bool(torch.isfinite(pair.displacement).all()):
            terms["field"] = field_error_mm2(displacement, pair.displacement, pair.spacing)
            total = total + self.design.supervised_weight * terms["field"]
        return total, terms, displacement

    # -- Lightning hooks -------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        pair = self.make_pair(batch, self._train_generator())
        total, terms, _ = self.pair_loss(pair)
        if not bool(torch.isfinite(total)):
            values = ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in terms.items())
            raise DivergenceError(
                f"training diverged at step {self.global_step + 1}: the loss is "
                f"{float(total.detach())} ({values}); lower the learning rate (learning_rate "
                f"{self.profile.learning_rate:g}) or check the data")
        size = pair.fixed.shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=size)
        self.log("time/elapsed_h", self.elapsed_seconds() / 3600, batch_size=size)
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=size)
        self.log_dict({f"weight/{k}": w for k, w in self.loss.weights().items()},
                      batch_size=size)
        return total

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        for k in range(self.profile.val_pairs):
            seed = self.seed + VAL_SEED_OFFSET * (1 + batch_idx) + k
            raw = self.augment_pair(batch, torch.Generator().manual_seed(seed))
            pair = self.prealign(raw)
            _, terms, displacement = self.pair_loss(pair)
            image_terms = [v for name, v in terms.items() if name != "regulariser"]
            record = {"loss": float(sum(image_terms)), "regulariser": float(terms["regulariser"])}
            if pair.fixed_labels is not None and len(self.label_values) > 1:
                warped = warp_labels(pair.moving_labels, displacement)
                foreground = self.label_values[1:]
                record["dice"] = float(dice_score(one_hot(warped, foreground),
                                                  one_hot(pair.fixed_labels, foreground)).mean())
                record["dice_before"] = float(dice_score(
                    one_hot(raw.moving_labels, foreground),
                    one_hot(raw.fixed_labels, foreground)).mean())
                if self.profile.prealign:
                    record["dice_affine"] = float(dice_score(
                        one_hot(pair.moving_labels, foreground),
                        one_hot(pair.fixed_labels, foreground)).mean())
            record["field_error_mm"] = float(field_error_mm2(
                displacement, pair.displacement, pair.spacing, squared=False))
            self._val_outputs.append(record)

    def on_validation_epoch_end(self) -> None:
        outputs, self._val_outputs = self._val_outputs, []
        if not outputs:
            return
        metrics = {f"val/{key}": sum(o[key] for o in outputs if key in o)
                   / sum(1 for o in outputs if key in o)
                   for key in outputs[0]}
        # 'val_loss' (the sum of the unweighted loss terms, comparable across validations
        # even while uncertainty weights move) drives the plateau schedule and the best model
        self.log("val_loss", metrics["val/loss"], prog_bar=True, sync_dist=True)
        self.log_dict(metrics, sync_dist=True)
        self.log("time/val_elapsed_h", self.elapsed_seconds() / 3600, sync_dist=True)
        if self._plateau is not None and not self.trainer.sanity_checking:
            self._plateau.step(metrics["val/loss"])
            self.log("lr", self.optimizers().param_groups[0]["lr"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # every parameter, frozen or not: Adam skips those without a gradient, so a
        # freezing schedule only has to flip requires_grad
        optimizer = torch.optim.Adam(self.parameters(), lr=self.profile.learning_rate)
        self._plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=self.profile.plateau_factor,
            patience=self.profile.plateau_patience)
        if self._plateau_state is not None:
            self._plateau.load_state_dict(self._plateau_state)
        return optimizer

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any,
                       optimizer_closure: Any = None) -> None:
        # profile.lr_drop_steps: after that many optimiser steps, the rate drops once; the
        # rate lives in the optimiser's state, so a resumed run does not drop it again
        if self.trainer.global_step in self.profile.lr_drop_steps:
            for group in optimizer.param_groups:
                group["lr"] *= self.profile.plateau_factor
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # checked before any callback can save the step: no checkpoint holds such weights
        bad = next((name for name, p in self.named_parameters()
                    if not bool(torch.isfinite(p).all())), None)
        if bad is not None:
            raise DivergenceError(
                f"training diverged at step {self.trainer.global_step}: the weights became "
                f"NaN or Inf ({bad}); lower the learning rate (learning_rate "
                f"{self.profile.learning_rate:g}) or check the data")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ddmr_elapsed_s"] = self.elapsed_seconds()
        if self._generator is not None:
            checkpoint["ddmr_generator"] = self._generator.get_state()
        if self._plateau is not None:
            checkpoint["ddmr_plateau"] = self._plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._elapsed_before = float(checkpoint.get("ddmr_elapsed_s", 0.0))
        self._generator_state = checkpoint.get("ddmr_generator")
        self._generator = None
        self._plateau_state = checkpoint.get("ddmr_plateau")
