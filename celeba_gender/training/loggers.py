"""The run's experiment loggers (conf/logger/): built from the config, and given the run's facts
and results at its end, each through its own API. A logger that fails is a warning: the run's
own files (metrics.json, metrics.csv) hold everything, so it never fails the run."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig
from tensorboard.plugins.hparams import plugin_data_pb2
from torch.utils.tensorboard.summary import hparams

from celeba_gender.data.cache import atomic_write
from celeba_gender.library_internals import file_writer, sanitize_hparams, wandb_run_started
from celeba_gender.ranks import global_rank
from celeba_gender.training.outputs import log_confusion_matrix

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'celeba-gender[loggers]'"
LOGGER_RUNS_FILE = "logger_runs.json"  # the run folder's MLflow and W&B run ids, by logger name


class StudyTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoard logger, arranged for comparing the study's runs.

    TensorBoard's Scalars page opens the first two tag groups (the part before the first "/",
    sorted by name, scalars and images together) and its HParams table ticks the first five
    hyperparameters, those marked as differing between runs first, the rest by name.

    Args:
        tag_prefixes: ``{old: new}``: a tag starting with ``old`` is written as ``new`` + the rest
            (``test/acc`` -> ``~test/acc``), so that train/ and val/ are the groups shown open;
            ``new: null`` leaves such tags out (Lightning's ``epoch`` counter).
        hparams_first: the hyperparameters the HParams table ticks (at most five show ticked).
        **kwargs: Lightning's ``TensorBoardLogger`` arguments.
    """

    def __init__(
        self,
        *args: Any,
        tag_prefixes: Mapping[str, str | None] | None = None,
        hparams_first: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        # Longest first: a more specific prefix wins.
        self.tag_prefixes = dict(
            sorted((tag_prefixes or {}).items(), key=lambda item: -len(item[0]))
        )
        self.hparams_first = list(hparams_first)
        self._written_tags: set[str] = set()

    def shown_tag(self, tag: str) -> str | None:
        """The name ``tag`` is written under (None: left out)."""
        for old, new in self.tag_prefixes.items():
            if tag.startswith(old):
                return None if new is None else new + tag[len(old) :]
        return tag

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        shown = {}
        for tag, value in metrics.items():
            name = self.shown_tag(tag)
            if name is not None:
                shown[name] = value
        self._written_tags.update(shown)
        super().log_metrics(shown, step)

    @rank_zero_only
    def log_hyperparams(
        self,
        params: Mapping[str, Any],
        metrics: Mapping[str, float] | None = None,
        step: int | None = None,
    ) -> None:
        """Without ``metrics`` (the run's facts, before training): kept for hparams.yaml.
        With them: one row of TensorBoard's HParams table, ``params`` against ``metrics``
        (shown under their own names, e.g. test/acc); a metric already written as a scalar is
        not written again."""
        if not metrics:
            super().log_hyperparams(params)
            return
        missing = {k: v for k, v in metrics.items() if self.shown_tag(k) not in self._written_tags}
        self.log_metrics(missing, step)
        # A bool as its word: TensorBoard would show True as 1.0.
        values = sanitize_hparams(
            self, {k: str(v) if isinstance(v, bool) else v for k, v in params.items()}
        )
        shown = {self.shown_tag(k): k for k in metrics if self.shown_tag(k) is not None}
        experiment, start, end = hparams(values, dict.fromkeys(shown, 0.0))
        # The experiment summary names the table's columns: mark the ones to tick first, and
        # give the metrics their own names (the scalars' tags sort after train/ and val/).
        content = experiment.value[0].metadata.plugin_data
        data = plugin_data_pb2.HParamsPluginData.FromString(content.content)
        for info in data.experiment.hparam_infos:
            info.differs = info.name in self.hparams_first
        for info in data.experiment.metric_infos:
            info.display_name = shown[info.name.tag]
        content.content = data.SerializeToString()
        writer = file_writer(self.experiment)
        for summary in (experiment, start, end):
            writer.add_summary(summary, step)


def build_loggers(cfg: DictConfig, resume_step: int, resuming: bool) -> list[Logger]:
    """The config's ``logger`` entries (one set to null is off). One that cannot be built or
    started (its package missing, its store unreachable) is left out with a warning. A run
    folder's later attempt that continues from its checkpoint (``resuming``) logs into the
    MLflow and W&B runs the first one opened (their ids kept in ``LOGGER_RUNS_FILE``), not into
    new ones; an attempt that starts afresh opens new runs (the old ones' steps would repeat)."""
    loggers = []
    runs_file = Path(cfg.paths.output_dir) / LOGGER_RUNS_FILE
    runs = _read_runs(runs_file) if resuming else {}
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        if logger_cfg is None:
            continue
        try:
            extra, target = {}, get_class(logger_cfg._target_)
            if issubclass(target, WandbLogger):
                _finish_open_wandb_run()
                if name in runs:  # offline: a new folder with the same id; `wandb sync` joins
                    extra |= {"id": runs[name], "resume": "allow"}
            if issubclass(target, MLFlowLogger) and name in runs:
                extra["run_id"] = runs[name]
            if issubclass(target, TensorBoardLogger):
                # TensorBoard drops what the folder's earlier attempt logged from this step on
                # (steps after the checkpoint, replayed now; everything, on a fresh start).
                extra["purge_step"] = resume_step
            logger = _opened(logger_cfg, extra, runs.get(name))
            if global_rank() == 0 and isinstance(logger, MLFlowLogger | WandbLogger):
                runs[name] = logger.run_id if isinstance(logger, MLFlowLogger) else logger.version
                atomic_write(runs_file, (json.dumps(runs, indent=1) + "\n").encode())
        except Exception as error:  # noqa: BLE001 - any logger's failure is the same warning
            if isinstance(error, InstantiationException) and error.__cause__ is not None:
                error = error.__cause__
            hint = f" ({INSTALL_HINT})" if isinstance(error, ImportError) else ""
            log.warning(
                "logger.%s is off for this run: %s: %s%s",
                name,
                type(error).__name__,
                str(error).strip().splitlines()[0] if str(error).strip() else "",
                hint,
            )
            continue
        loggers.append(logger)
    return loggers


def _opened(logger_cfg: DictConfig, extra: dict, earlier_run: str | None) -> Logger:
    """The logger, its file, store or run opened now (not mid-training); when the earlier
    attempt's run cannot be continued (its store was emptied), a new run, with a warning."""
    try:
        logger = instantiate(logger_cfg, **extra)
        if global_rank() == 0:
            _ = logger.experiment
        return logger
    except Exception as error:  # noqa: BLE001 - retried as a new run below, or raised
        if earlier_run is None:
            raise
        log.warning("run %s could not be continued (%s): a new run instead", earlier_run, error)
    extra = {k: v for k, v in extra.items() if k not in ("id", "resume", "run_id")}
    logger = instantiate(logger_cfg, **extra)
    if global_rank() == 0:
        _ = logger.experiment
    return logger


def _read_runs(path: Path) -> dict[str, str]:
    try:
        runs = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in runs.items()} if isinstance(runs, dict) else {}


def _warn(logger: Logger, what: str, error: Exception) -> None:
    log.warning(
        "%s could not record %s (%s: %s); metrics.json and metrics.csv have it.",
        type(logger).__name__,
        what,
        type(error).__name__,
        error,
    )


def log_run_facts(
    loggers: Sequence[Logger], facts: Mapping[str, Any], module_hparams: Mapping[str, Any]
) -> None:
    """Before training: each logger's parameters are the run's facts (model, treatment, lr,
    ...) and, under ``module/``, the LightningModule's own arguments. (Lightning would log
    those alone at the start of fit, where names they share with the facts, in another form,
    make MLflow refuse the facts: "Changing param values is not allowed".)"""
    for logger in loggers:
        try:
            logger.log_hyperparams({**facts, "module": dict(module_hparams)})
        except Exception as error:  # noqa: BLE001 - a logger's failure never fails the run
            _warn(logger, "the run's parameters", error)


def log_results(
    loggers: Sequence[Logger],
    facts: Mapping[str, Any],
    metrics: Mapping[str, float],
    confusion: torch.Tensor,
    step: int,
) -> None:
    """After the test: TensorBoard gets the test confusion matrix and the run's row of its
    HParams table (``facts`` against ``metrics``); the other loggers got the test metrics
    during the test, through their own ``log_metrics``. A failure is a warning."""
    for logger in loggers:
        try:
            if isinstance(logger, TensorBoardLogger):
                tag = "test/confusion_matrix"
                if isinstance(logger, StudyTensorBoardLogger):
                    tag = logger.shown_tag(tag)
                if tag is not None:
                    log_confusion_matrix(logger, confusion, tag, step)
                logger.log_hyperparams(dict(facts), metrics=dict(metrics), step=step)
            logger.save()
        except Exception as error:  # noqa: BLE001 - the results are in metrics.json anyway
            _warn(logger, "the run's results", error)


def _finish_open_wandb_run() -> None:
    """A W&B run an earlier job of this process left open (it failed before its end) would
    take this job's logging: Lightning's logger reuses an open run."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def close_loggers(loggers: Sequence[Logger]) -> None:
    """End what outlives the trainer: a W&B run stays open until ``finish``, and the next job
    of a sweep run in this process would log into it."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and wandb_run_started(logger):
            try:
                logger.experiment.finish()
            except Exception as error:  # noqa: BLE001
                log.warning("W&B run could not be finished: %s", error)
