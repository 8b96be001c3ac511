"""Small callbacks the training run needs and Lightning does not ship in this form."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

from celeba_gender.data.cache import atomic_write
from celeba_gender.training.outputs import log_confusion_matrix


class TrainingThroughput(L.Callback):
    """Images per second of the training loop: loading, forward, backward and step of every
    training batch, excluding validation (which Lightning runs inside the training epoch)."""

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self._previous: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._previous = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._previous = None  # the time until the next training batch is not training

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._previous is None:
            self._previous = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        self.seconds += now - self._previous
        self._previous = now
        self.images += len(batch[0]) * trainer.world_size

    @property
    def images_per_second(self) -> float | None:
        return self.images / self.seconds if self.seconds else None


class TestThroughput(L.Callback):
    """Images per second of the whole test epoch (loading, transform, forward, metrics): the
    run's inference cost in metrics.json."""

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self._started = 0.0

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.images, self._started = 0, time.perf_counter()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.images += len(batch[0]) * trainer.world_size

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the module's epoch end (callbacks' on_test_epoch_end run before it), whose
        # gather and metrics wait for the device to finish.
        self.seconds = time.perf_counter() - self._started

    @property
    def images_per_second(self) -> float | None:
        return self.images / self.seconds if self.seconds else None


class ValidationConfusionMatrix(L.Callback):
    """Adds each validation epoch's confusion matrix to TensorBoard as a figure."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # on_validation_end runs after the module's epoch-end hook has computed the matrix.
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        # The step Lightning logs this validation's metrics at (that of the last training
        # step), so that a resumed run's TensorBoard purge treats them alike.
        step = max(trainer.global_step - 1, 0)
        for logger in trainer.loggers:
            confusion = pl_module.evaluation("val").confusion
            log_confusion_matrix(logger, confusion, "val/confusion_matrix", step)


class EpochMetricsCSV(L.Callback):
    """One row per training epoch in ``path`` (the run folder's metrics.csv), whatever loggers
    are on: epoch, step, learning rate, the epoch's wall seconds (for an epoch a resumed run
    finished, those of its part after the resume), then its epoch-level train and
    validation metrics (those whose names start with one of ``prefixes``; per-step values are
    left out).

    Written at each training epoch's end, which follows its validation, so a row holds both.
    A resumed run first drops the rows of the epochs it will train again (written after its
    checkpoint), so no epoch is listed twice."""

    def __init__(self, path: str | Path, prefixes: Sequence[str] = ("train/", "val/")) -> None:
        self.path = Path(path)
        self.prefixes = tuple(prefixes)
        self._started = 0.0
        self._validated_epoch: int | None = None

    def _rows(self) -> pd.DataFrame:
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return pd.DataFrame()
        return pd.read_csv(self.path)

    def _write(self, rows: pd.DataFrame) -> None:
        atomic_write(self.path, rows.to_csv(index=False).encode())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the checkpoint is restored: current_epoch is the first epoch trained now.
        if trainer.is_global_zero and self.path.is_file():
            rows = self._rows()
            if "epoch" in rows:
                self._write(rows[rows["epoch"] < trainer.current_epoch])

        # A run resumed inside an epoch starts there, without on_train_epoch_start: that
        # epoch's seconds are those since the resume.
        self._started = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {
            name: float(value)
            for name, value in sorted(trainer.callback_metrics.items())
            if name.startswith(self.prefixes) and not name.endswith("_step")
        }
        if self._validated_epoch != trainer.current_epoch:  # check_val_every_n_epoch > 1:
            # callback_metrics still hold the last validation's values, not this epoch's.
            metrics = {name: v for name, v in metrics.items() if not name.startswith("val/")}
        # The first parameter group's rate: what the scheduler set for this epoch.
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        row = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "lr": optimizer.param_groups[0]["lr"] if optimizer else math.nan,
            "epoch_seconds": time.perf_counter() - self._started,
            **metrics,
        }
        rows, new = self._rows(), pd.DataFrame([row])
        if "epoch" in rows:
            rows = rows[rows["epoch"] < trainer.current_epoch]
        self._write(new if rows.empty else pd.concat([rows, new], ignore_index=True))


class EMAWeights(EMAWeightAveraging):
    """An exponential moving average of the weights (and BatchNorm statistics), updated after
    every optimizer step with ``decay``: validation, best.ckpt's ``state_dict`` (so eval.py and
    predict.py) and the run's test all see the averaged weights.

    Lightning's callback does all of it but the test: when the trainer then loads best.ckpt, it
    puts back the raw weights saved beside the average (they are for resuming a fit), so the
    test saw weights no validation had chosen. Here that reload happens only when fitting.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # A weights-only checkpoint skips callbacks' on_save_checkpoint: it would hold the
        # raw weights, and the test would evaluate those. (train.py's schema says so first.)
        if stage == TrainerFn.FITTING and any(
            getattr(c, "save_weights_only", False) for c in trainer.checkpoint_callbacks
        ):
            raise ValueError(
                "callbacks.ema needs callbacks.model_checkpoint.save_weights_only=false (a "
                "weights-only checkpoint would hold the raw weights, not their average)."
            )
        super().setup(trainer, pl_module, stage)

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
