"""Fault injection for the resilience tests: make a training process die at a chosen step.

Off unless ``fault.kill_at_step`` is set (conf/config.yaml). The tests use it to kill a run
with SIGKILL mid-epoch, or to crash one job of a sweep hard (``os._exit``), at a step they
choose, so that resumption and crash isolation are tested at known points.
"""

from __future__ import annotations

import os
import signal

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

from celeba_gender.config_schema import FAULTS

HARD_KILLS = ("sigkill", "exit")


class KillAtStep(L.Callback):
    """After training step ``step``: send this process a stop signal (``sigterm``, ...) during
    the step's end, as a cluster would; ``sigkill`` (no cleanup at all) and ``exit``
    (``os._exit``, a hard interpreter crash) use ``HardKillAtStep``: ``kill_at_step``."""

    def __init__(self, step: int, how: str = "sigkill") -> None:
        if how not in FAULTS:
            raise ValueError(f"fault.how={how!r}: choose one of {', '.join(FAULTS)}.")
        self.step, self.how = int(step), how

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step or not trainer.is_global_zero:
            return
        if self.how == "exit":
            os._exit(70)
        os.kill(os.getpid(), getattr(signal, self.how.upper()))


class HardKillAtStep(KillAtStep, Checkpoint):
    """A hard kill lands after everything the step's end does, the last checkpoint's decision
    included (Lightning runs ``Checkpoint`` callbacks last, in their order): the moment that
    finds what was saved but not yet flushed."""


def kill_at_step(step: int, how: str = "sigkill") -> KillAtStep:
    """The fault callback for ``fault.kill_at_step`` / ``fault.how``."""
    return (HardKillAtStep if how in HARD_KILLS else KillAtStep)(step, how)
