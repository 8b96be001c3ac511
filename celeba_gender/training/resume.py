"""Runs that survive interruption: what a checkpoint holds beyond Lightning's own state, when
``last.ckpt`` is written, and whether a run folder may be continued.

Exact resumption rests on three things. Lightning's checkpoint holds the weights, optimizer,
scheduler, loop counters and callback states; ``ResumeState`` adds every global random stream
(torch, CUDA, numpy, python) at the moment of saving, and the training order of an epoch comes
from (seed, epoch) alone (``celeba_gender.data.sampling``), with the position inside the epoch
saved by the DataLoader. ``LastCheckpoint`` writes ``last.ckpt`` every N steps and when a
stop signal arrives, and ``AtomicCheckpointIO`` makes every checkpoint write all-or-nothing.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fnmatch
import functools
import json
import logging
import random
import re
import shutil
import signal
import stat as stat_module
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint
from omegaconf import DictConfig, OmegaConf

from celeba_gender.data.cache import atomic_output, atomic_write, human_bytes
from celeba_gender.data.sources import DEFAULT_CLASS_NAMES, DEFAULT_CSV_COLUMNS
from celeba_gender.library_internals import dump_checkpoint, should_accumulate
from celeba_gender.stop_signals import StopSignalHandler
from celeba_gender.training.outputs import METRICS_FILE

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.ckpt"
SAVED_CONFIG_DIR = ".hydra"  # where Hydra itself would keep a run's config
RESOLVED_CONFIG = "resolved_config.yaml"  # the values the run used, interpolations resolved
# Settings added after runs were made, at the values every earlier run had in effect (it
# read a CelebA copy): a run saved without them is read as having them, so it resumes and
# matches a new run of its command while they stay at these values.
ADDED_SETTINGS = {
    "data.source": "auto",
    "data.class_names": list(DEFAULT_CLASS_NAMES),
    "data.csv_columns": dict(DEFAULT_CSV_COLUMNS),
    "data.progressive_resizing": None,
    "label_smoothing": 0.0,
    "module.label_smoothing": 0.0,
    "callbacks.ema": None,
    "data.final_fit": False,
    "run_facts.final_fit": "data.final_fit",
}


class ResumeRefused(Exception):
    """A run folder cannot be (re)used as asked; nothing in it was changed."""


class TrainingInterrupted(BaseException):
    """A run stopped on a signal: during training after saving ``last.ckpt``, before or after
    it at once. ``checkpoint`` is where ``resume=true`` continues from (None: it starts again).

    A ``BaseException``, like ``KeyboardInterrupt``: raised at any point of a job's setup, no
    ``except Exception`` on the way may take it for an error and carry on."""

    def __init__(
        self, signum: int, checkpoint: Path | None, epoch: int, step: int, forward: Any = None
    ) -> None:
        self.signum, self.checkpoint, self.epoch, self.step = signum, checkpoint, epoch, step
        self.forward_to = forward  # the handler that was installed before the job, if any
        self.finished = False  # came after the results were written (status ok)
        where = f"saved {checkpoint}" if checkpoint is not None else "no checkpoint yet"
        super().__init__(
            f"interrupted by {signal.Signals(signum).name} at epoch {epoch}, step {step}; {where}"
        )

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    def forward(self) -> None:
        """Call the handler the signal had before the job (a cluster launcher's requeue)."""
        handler = self.forward_to
        if callable(handler) and handler is not signal.default_int_handler:
            handler(self.signum, None)


class StopSignals(StopSignalHandler):
    """The stop signals' handler for a whole training job, from its first file to its last.

    Outside training (loading data, building the model, testing) a signal stops the job at once
    with ``TrainingInterrupted``: there is nothing to save, and ``resume=true`` continues from
    the checkpoint the folder already has. During training ``LastCheckpoint`` defers it: the
    step ends, ``last.ckpt`` is saved, then training stops. ``held``: the signal is only
    recorded (while the results are written, or once the job is stopping). A second Ctrl-C
    during training stops at once, from the last checkpoint written whole."""

    def __init__(self, names: Sequence[str] = ()) -> None:
        super().__init__(names)
        self.deferred = False  # training: LastCheckpoint saves, then stops
        # Where a stop outside training leaves the run (the resume point).
        self.checkpoint: Path | None = None
        self.epoch = 0
        self.step = 0
        self.last_path: Path | None = None  # last.ckpt, which training may rewrite

    def handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT and not self.held:
            # A second Ctrl-C: stop now, from the last checkpoint written whole.
            if self.deferred and self.last_path is not None and self.last_path.is_file():
                self.checkpoint = self.last_path
                self.epoch, self.step = checkpoint_position(self.last_path)
            raise self.stop_now()
        self.requested = signum
        if not (self.deferred or self.held):
            raise self.stop_now()

    def interruption(self, checkpoint: Path | None = None, epoch=None, step=None):
        signum = self.requested if self.requested is not None else signal.SIGTERM
        checkpoint = checkpoint if checkpoint is not None else self.checkpoint
        epoch = self.epoch if epoch is None else epoch
        step = self.step if step is None else step
        if checkpoint is not None:
            # The epoch and step resume=true continues from are the checkpoint's own: a save at
            # an epoch's end holds that epoch, while the trainer has counted on to the next.
            with contextlib.suppress(Exception):  # unreadable: the trainer's count it is
                epoch, step = checkpoint_position(checkpoint)
        return TrainingInterrupted(signum, checkpoint, epoch, step, self.previous.get(signum))


# --------------------------------------------------------------------------- checkpoint writing
class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file, synced, then renamed over the old one: a kill
    during the write leaves the previous checkpoint intact, never a truncated one."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options.")
        path = Path(path)
        # A write killed earlier (SIGKILL) left its temporary file; one process writes a run's
        # checkpoints, so any such file is stale.
        for stale in path.parent.glob(f".{path.name}.*"):
            stale.unlink(missing_ok=True)
        try:
            with atomic_output(path) as handle:
                torch.save(checkpoint, handle)
        except (OSError, RuntimeError) as error:
            # torch.save on a full disk says "[enforce fail at inline_container.cc] unexpected
            # pos": tell it apart by the space left, and say so.
            needed = _checkpoint_bytes(checkpoint)
            free = shutil.disk_usage(path.parent).free
            if getattr(error, "errno", None) != errno.ENOSPC and free >= needed:
                raise
            kept = f"the previous {path.name} is intact; " if path.is_file() else ""
            raise OutOfSpace(
                f"No space left in {path.parent} to write {path.name}: it needs about "
                f"{human_bytes(needed)}, {human_bytes(free)} is free. Free some space (or point "
                f"paths.log_dir elsewhere); {kept}continue with the same command and "
                "resume=true."
            ) from None


class OutOfSpace(OSError):
    """A file the run must write does not fit on its disk."""


def _checkpoint_bytes(node: Any) -> int:
    """What a checkpoint's tensors take on disk (its other values are small)."""
    if isinstance(node, torch.Tensor):
        return node.numel() * node.element_size()
    if isinstance(node, dict):
        return sum(_checkpoint_bytes(value) for value in node.values())
    if isinstance(node, (list, tuple)):
        return sum(_checkpoint_bytes(value) for value in node)
    return 0


class ResumeState(L.Callback):
    """Puts the global random streams into every checkpoint and restores them on resume (each
    training batch reseeds them from its position, ``seed_batch_streams``; what draws between
    batches, per-sample transforms in the main process, continues from here); flushes the
    loggers before each checkpoint so that what was logged up to it is on disk."""

    def state_dict(self) -> dict[str, Any]:
        # Tensors and plain values only, so checkpoints still load with weights_only=True.
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
            "python": random.getstate(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()  # this rank's device
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        kind, keys, position, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        random.setstate(state_dict["python"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state(state_dict["cuda"])

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module, checkpoint: dict) -> None:
        _flush(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        _flush(trainer)  # the previous epoch's metrics, logged after its checkpoint


def _flush(trainer: L.Trainer) -> None:
    for logger in trainer.loggers:
        logger.save()


class LastCheckpoint(Checkpoint):
    """The one writer of ``last.ckpt``: at every epoch's end (``at_epoch_end``: the config's
    ``callbacks.model_checkpoint.save_last``, which the run turns off on ``ModelCheckpoint``),
    every ``every_n_steps`` training steps, and when one of the job's stop signals
    (``StopSignals``) arrives during training (what clusters send before a time limit or a
    preemption), then it stops training with ``TrainingInterrupted``.

    A ``Checkpoint`` subclass so that Lightning runs it after ``ModelCheckpoint`` at an epoch's
    end: the last checkpoint then records that epoch's best model. Saves never happen at an
    epoch's last batch: that epoch's validation and end-of-epoch checkpoint come first.
    ``weights_only`` applies to the epoch-end saves (as ``save_weights_only`` did to
    ModelCheckpoint's); a step or stop save is always whole, since it exists to resume.

    A save is taken at the batch's (epoch's) end but written at the next hook: Lightning logs
    that batch's (epoch's) metrics after the callbacks' end hooks, and a checkpoint on disk
    whose last logged points were not would lose them for good when the process is killed
    then (the resumed run starts after them). ``writer`` does the writing first among the
    callbacks (run it first: another callback's ``on_train_end``, the EMA's, changes the
    weights the taken checkpoint holds); this callback's own hooks write whatever it left.
    """

    def __init__(
        self,
        path: str | Path,
        every_n_steps: int | None = None,
        stops: StopSignals | None = None,
        at_epoch_end: bool = False,
        weights_only: bool = False,
    ) -> None:
        self.path = Path(path)
        self.every_n_steps = every_n_steps or 0
        self.at_epoch_end = at_epoch_end
        self.weights_only = weights_only
        self.stops = stops if stops is not None else StopSignals()
        self._stop_at_next_start = False
        self._saved_step: int | None = None
        self._saved_whole = False
        self._taken: dict[str, Any] | None = None  # a save not written yet
        self._ended, self._stop_at_end = False, False
        self.writer = _WritesLastCheckpoint(self)

    # -- signals: deferred during training (Lightning's own handlers replaced by the job's)
    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self.stops.install()
        self.stops.deferred = True
        self.stops.last_path = self.path
        self._ended, self._stop_at_end = False, False

    def end_training(self, trainer: L.Trainer) -> None:
        """Training is over: write what was taken; a stop asked during the last epoch's end is
        saved now (whole: the last epoch's save may hold weights only). ``writer`` calls it
        before any other callback's ``on_train_end`` (the EMA's copies its average over the
        weights a save now takes)."""
        if self._ended:
            return
        self._ended = True
        self.write_taken(trainer)
        if self.path.is_file():
            # A stop from here on (Lightning's teardown, testing) resumes from the last
            # checkpoint training wrote, not from where the job started.
            self.stops.checkpoint = self.path
        self.stops.deferred = False
        self._stop_at_end = bool(self.stops.signals) and self._stop_agreed(trainer)
        if self._stop_at_end and (self._saved_step != trainer.global_step or not self._saved_whole):
            self._save(trainer)
            self.write_taken(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self.end_training(trainer)
        if self._stop_at_end:  # it saved, and stops before testing
            self._interrupt(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        # A crash keeps the save taken (a batch's consistent end); a stop (a second Ctrl-C)
        # named the last checkpoint written, which is the one resume=true must find.
        if isinstance(exception, Exception):
            self.write_taken(trainer, exception)
        self._taken = None
        self.stops.deferred = False  # after the write: a signal during it is only recorded

    def _stop_agreed(self, trainer: L.Trainer) -> bool:
        # Every rank must save and stop at the same step (saving is collective).
        asked = self.stops.requested is not None
        return trainer.strategy.reduce_boolean_decision(asked, all=False)

    def _save(self, trainer: L.Trainer, weights_only: bool = False) -> None:
        self._taken = dump_checkpoint(trainer, weights_only)  # written by the next hook
        self._saved_step, self._saved_whole = trainer.global_step, not weights_only

    def write_taken(self, trainer: L.Trainer, exception: BaseException | None = None) -> None:
        """Write the save taken at the last batch's or epoch's end, once what Lightning logged
        after it is on disk. After an exception, without waiting for the other ranks."""
        if self._taken is None:
            return
        checkpoint, self._taken = self._taken, None
        _flush(trainer)
        if exception is None:
            trainer.strategy.save_checkpoint(checkpoint, self.path)
            trainer.strategy.barrier("LastCheckpoint.write_taken")
            return
        try:
            trainer.strategy.save_checkpoint(checkpoint, self.path)
        except BaseException as error:  # noqa: BLE001 - the run's own exception is the one raised
            log.warning("%s was not written (%s) after %r", self.path, error, exception)

    # -- when to save
    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        self.write_taken(trainer)
        if self._stop_at_next_start:
            self._interrupt(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module) -> None:
        self.write_taken(trainer)  # before validation swaps in the EMA weights

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        self.write_taken(trainer)
        if self._stop_at_next_start:
            self._interrupt(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 >= trainer.num_training_batches:
            return  # the epoch's end follows: validation, then its own checkpoint
        if should_accumulate(trainer):
            return  # inside a gradient-accumulation window: its gradients are not saved
        if (
            isinstance(trainer.val_check_batch, int)
            and (batch_idx + 1) % trainer.val_check_batch == 0
        ):
            return  # a validation follows (val_check_interval < 1): a restart would skip it
        stop = self._stop_agreed(trainer) if self.stops.signals else False
        periodic = self.every_n_steps and trainer.global_step % self.every_n_steps == 0
        if stop or periodic:
            self._save(trainer)
        # Stop before the next batch, so this batch's step metrics are still logged.
        self._stop_at_next_start = stop

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self.write_taken(trainer)  # a step's save, when the epoch ended early (should_stop)
        stop = bool(self.stops.signals) and self._stop_agreed(trainer)
        # After ModelCheckpoint's save, with its new best (which fast_dev_run does not save).
        if stop or (self.at_epoch_end and not trainer.fast_dev_run):
            self._save(trainer, weights_only=self.weights_only and not stop)
        if stop:
            self._stop_at_next_start = True  # the epoch's metrics are logged before that

    def _interrupt(self, trainer: L.Trainer) -> None:
        self.write_taken(trainer)
        self._stop_at_next_start = False
        self.stops.deferred = False
        raise self.stops.stop_now(self.path, trainer.current_epoch, trainer.global_step)


class _WritesLastCheckpoint(L.Callback):
    """``LastCheckpoint.writer``: writes its taken save at the first hook after it, before
    any other callback runs that hook."""

    def __init__(self, owner: LastCheckpoint) -> None:
        self.owner = owner

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        self.owner.write_taken(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module) -> None:
        self.owner.write_taken(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self.owner.write_taken(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module) -> None:
        # A validation between a batch's end and the next (max_time, val_check_interval):
        # written before it swaps the EMA weights in or ModelCheckpoint records a new best.
        self.owner.write_taken(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self.owner.end_training(trainer)


def checkpoint_step(path: Path) -> int:
    """The global step a checkpoint was saved at (memory-mapped: weights are not read)."""
    return checkpoint_position(path)[1]


def checkpoint_position(path: Path) -> tuple[int, int]:
    """The epoch and global step a checkpoint was saved at (weights are not read)."""
    checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    return int(checkpoint.get("epoch", 0)), int(checkpoint.get("global_step", 0))


# --------------------------------------------------------------------------- run folders
@dataclass(frozen=True)
class RunStart:
    """How a training run starts in its folder."""

    checkpoint: Path | None = None  # resume from this checkpoint
    finished: dict | None = None  # the folder's run already finished: this is its metrics.json
    resume_step: int = 0  # the checkpoint's global step


def plan_start(
    cfg: DictConfig, output_dir: Path, checkpoint_dir: Path, quiet: bool = False
) -> RunStart:
    """Decide from the folder's files whether to skip, resume or start a run; refuse (without
    touching anything) when the folder holds a run that ``cfg`` must not overwrite. ``quiet``:
    no warnings (a first look before the folder's lock: the log file is the holder's)."""
    resume = bool(cfg.get("resume", False))
    record = read_record(output_dir)
    last = checkpoint_dir / LAST_CHECKPOINT
    if record.get("status") == "ok":
        if resume:
            _refuse_changed_config(cfg, output_dir, quiet)  # its results answer this command only
            return RunStart(finished=record)
        raise ResumeRefused(
            f"{output_dir} already holds a finished run ({METRICS_FILE}: status ok). Pass "
            "resume=true to keep it (it is skipped), or choose another hydra.run.dir."
        )
    if not last.is_file():
        if resume and not quiet:
            log.warning(
                "resume=true: no %s in %s, starting fresh.", LAST_CHECKPOINT, checkpoint_dir
            )
        return RunStart()
    if not resume:
        raise ResumeRefused(
            f"{output_dir} holds an unfinished run ({last}). Pass resume=true to continue it, "
            "or choose another hydra.run.dir."
        )
    _refuse_changed_config(cfg, output_dir, quiet)
    try:
        step = checkpoint_step(last)
    except Exception as error:  # noqa: BLE001 - truncated, empty, not a checkpoint at all
        # torch's own words for an empty file advise re-saving with another option: not ours.
        why = "an empty file" if last.stat().st_size == 0 else _first_line(error)
        raise ResumeRefused(
            f"{last} is damaged and cannot be resumed from ({why}). To start this run "
            f"over in the same folder, delete it (rm '{last}') and run the command again."
        ) from None
    return RunStart(checkpoint=last, resume_step=step)


def _first_line(error: Exception) -> str:
    return f"{type(error).__name__}: {(str(error).splitlines() or ['unreadable'])[0]}"


def _refuse_changed_config(cfg: DictConfig, output_dir: Path, quiet: bool = False) -> None:
    saved = saved_config(output_dir)
    if saved is None:
        if not quiet:
            log.warning("No saved config in %s: resuming without checking it.", output_dir)
        return
    differences = changed_settings(saved, cfg)
    if differences:
        raise ResumeRefused(
            f"resume=true, but this command's config differs from the one {output_dir} was "
            "started with:\n  "
            + "\n  ".join(differences)
            + "\nRun the original command with resume=true, or start a new run folder."
        )


def changed_settings(saved: dict, cfg: DictConfig) -> list[str]:
    """How ``cfg`` differs from the ``saved`` resolved config in what resumption must keep
    ("key: old -> new"), leaving out ``resume_ignore`` and the keys made from them."""
    ignore = list(cfg.get("resume_ignore", ()))
    # A key whose value is made from an ignored one (checkpoint dirpath: ${paths.output_dir}/...)
    # is where things are too: a moved or copied run folder resumes.
    ignore += derived_keys(OmegaConf.to_container(cfg, resolve=False), ignore)
    return config_differences(saved, resolved(cfg), ignore)


def read_record(output_dir: Path) -> dict:
    """A run's metrics.json, or {} when it has none or it cannot be read."""
    path = output_dir / METRICS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def resolved(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def saved_config(output_dir: Path) -> dict | None:
    """The resolved config a run folder was started with (None if it has none). A copy: the
    caller may change it."""
    folder = output_dir / SAVED_CONFIG_DIR
    path = folder / RESOLVED_CONFIG
    try:
        stat = path.stat()
    except OSError:
        stat = None
    if stat is not None and stat_module.S_ISREG(stat.st_mode):
        # Parsed once per version of the file (the analysis asks for each run's several
        # times; a parse costs ~40 ms), unless written so recently that a rewrite within
        # the file system's time resolution could have kept its size and time.
        if time.time_ns() - stat.st_mtime_ns < RECENT_NS:
            return _read_resolved_config(path)
        version = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        return copy.deepcopy(_read_resolved_config_once(path, version))
    if (folder / "config.yaml").is_file():  # a folder from before resolved configs were kept
        try:  # resolved now (resolvers, environment): never cached
            config = resolved(OmegaConf.load(folder / "config.yaml"))
        except Exception:  # noqa: BLE001 - an interpolation that no longer resolves
            config = OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"))
        return _with_added_settings(config)
    return None


RECENT_NS = 3 * 10**9  # coarser than any file system's modification times (FAT: 2 s)


def _read_resolved_config(path: Path) -> dict:
    return _with_added_settings(OmegaConf.to_container(OmegaConf.load(path)))


@functools.lru_cache(maxsize=512)
def _read_resolved_config_once(path: Path, version: tuple[int, int, int, int]) -> dict:
    """``_read_resolved_config`` of one version (device, inode, size, modification time)."""
    return _read_resolved_config(path)


def _with_added_settings(config: dict) -> dict:
    """``config`` with each of ``ADDED_SETTINGS`` it lacks (a run from before them), where the
    node holding it exists."""
    for dotted, value in ADDED_SETTINGS.items():
        *parents, key = dotted.split(".")
        node = config
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.setdefault(key, copy.deepcopy(value))
    return config


def config_differences(saved: dict, current: dict, ignore: Iterable[str] = ()) -> list[str]:
    """``key: saved -> current`` for each dotted key whose value differs, except keys matching
    an ``ignore`` pattern (fnmatch, e.g. ``paths.*``)."""
    ignore = list(ignore)
    old, new = flatten_config(saved), flatten_config(current)
    lines = []
    for key in sorted(old.keys() | new.keys()):
        if is_ignored(key, ignore):
            continue
        before, after = old.get(key, "<absent>"), new.get(key, "<absent>")
        if before != after:
            lines.append(f"{key}: {before!r} -> {after!r}")
    return lines


def derived_keys(config: dict, ignore: Iterable[str]) -> list[str]:
    """The dotted keys of an unresolved ``config`` whose value interpolates an ignored key
    (``${paths.output_dir}``), directly or through other such keys."""
    flat = {k: v for k, v in flatten_config(config).items() if isinstance(v, str) and "${" in v}
    ignored = list(ignore)
    derived: list[str] = []
    changed = True
    while changed:
        changed = False
        for key, value in flat.items():
            if key in derived:
                continue
            referenced = re.findall(r"\$\{([\w.]+)\}", value)
            if any(is_ignored(name, ignored) or name in derived for name in referenced):
                derived.append(key)
                changed = True
    return derived


def flatten_config(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"dotted.key": value}`` (lists stay values)."""
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(flatten_config(value, f"{prefix}{key}."))
        return flat or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): node}


def is_ignored(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)


def save_run_config(cfg: DictConfig, output_dir: Path) -> None:
    """Keep the run's config in ``.hydra/`` as Hydra would (config, hydra, overrides), plus its
    resolved values. Hydra's own writing is off (``hydra.output_subdir: null``) so that a
    finished job that a continued sweep skips is not rewritten."""
    folder = output_dir / SAVED_CONFIG_DIR
    atomic_write(folder / "config.yaml", OmegaConf.to_yaml(cfg).encode())
    atomic_write(folder / RESOLVED_CONFIG, OmegaConf.to_yaml(resolved(cfg)).encode())
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        atomic_write(folder / "hydra.yaml", OmegaConf.to_yaml({"hydra": hydra_cfg}).encode())
        atomic_write(
            folder / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.overrides.task).encode()
        )


def leave_folder_untouched(output_dir: Path) -> None:
    """Detach the log files Hydra opened in ``output_dir``: a skipped job's folder must not
    gain even a log line (Hydra logs the next job's launch through the last job's handler)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        filename = getattr(handler, "baseFilename", None)
        if filename and Path(filename).resolve().parent == output_dir.resolve():
            root.removeHandler(handler)
            handler.close()


def say(message: str) -> None:
    """A line for the user that must not go into a run folder's log file."""
    print(message, file=sys.stderr, flush=True)
