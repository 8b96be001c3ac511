"""Training and evaluation jobs, from a composed Hydra config to a run folder of results.

``run_training`` / ``run_evaluation`` wrap the work so that a user's mistake (a wrong data path,
missing pretrained weights) ends with one clear line instead of a traceback, and a job that
fails inside a sweep is recorded in its folder while the sweep goes on.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from celeba_gender.config import PROJECT_ROOT
from celeba_gender.config_schema import ConfigError, EvalSchema, TrainSchema, validate
from celeba_gender.data import CelebADataModule, DataError
from celeba_gender.metrics import TEST_METRICS
from celeba_gender.models import GenderClassifier, PretrainedWeightsUnavailable, load_classifier
from celeba_gender.models.evaluation import EvaluationOutputs
from celeba_gender.ranks import global_rank
from celeba_gender.training.callbacks import (
    TestThroughput,
    TrainingThroughput,
    ValidationConfusionMatrix,
)
from celeba_gender.training.ddp import reset_distributed_state
from celeba_gender.training.faults import kill_at_step
from celeba_gender.training.folder_lock import hold_run_folder
from celeba_gender.training.loggers import (
    build_loggers,
    close_loggers,
    log_results,
    log_run_facts,
)
from celeba_gender.training.outputs import (
    METRICS_FILE,
    PREDICTIONS_FILE,
    VAL_PREDICTIONS_FILE,
    run_facts,
    write_failure,
    write_json,
    write_predictions,
)
from celeba_gender.training.refusals import record_refusal
from celeba_gender.training.resume import (
    LAST_CHECKPOINT,
    AtomicCheckpointIO,
    LastCheckpoint,
    OutOfSpace,
    ResumeRefused,
    ResumeState,
    StopSignals,
    TrainingInterrupted,
    checkpoint_position,
    leave_folder_untouched,
    plan_start,
    save_run_config,
    say,
)

log = logging.getLogger(__name__)


class _DropAdvertisements(logging.Filter):
    """Lightning advertises its cloud services (litlogger, litmodels: "💡 Tip: ...") on every
    run; our entry points leave that out."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg).lower()
        return not any(word in text for word in ("litlogger", "litmodels"))


_LIGHTNING_MESSAGES = logging.getLogger("lightning.pytorch.utilities.rank_zero")


def quiet_third_party_output() -> None:
    """Leave out what third-party code prints on every run and a user can do nothing about:
    each filter names one message, so anything else (ours, or new) is still shown."""
    if not any(isinstance(f, _DropAdvertisements) for f in _LIGHTNING_MESSAGES.filters):
        _LIGHTNING_MESSAGES.addFilter(_DropAdvertisements())
    # torch deprecates a class Lightning's own code still uses, once per fit/test/predict.
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
    )
    # Our resume checkpoint (last.ckpt) is a second ModelCheckpoint; the best one is the first,
    # which is the one Lightning takes.
    warnings.filterwarnings(
        "ignore", message=r'`\.test\(ckpt_path="best"\)` is called with Trainer'
    )


USER_ERRORS = (DataError, PretrainedWeightsUnavailable, OutOfSpace)


def _output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def describe(cfg: DictConfig) -> dict[str, Any]:
    """The facts that identify a run in metrics.json, TensorBoard's hparams table and the
    analysis: the config's ``run_facts`` (name: config key)."""
    return run_facts(cfg, cfg.run_facts, strict=True)


def build_model(cfg: DictConfig, datamodule: CelebADataModule) -> GenderClassifier:
    """``cfg.module`` instantiated, with what the data decides."""
    attribute_targets = datamodule.attribute_names(cfg.attribute_targets)
    try:
        model = instantiate(
            cfg.module,
            class_weights=datamodule.class_weights,
            eval_transform=datamodule.eval_transform_settings(),
            attribute_targets=attribute_targets,
        )
    except InstantiationException as error:
        # Hydra wraps what the constructor raised (missing pretrained weights, ...): report that.
        if error.__cause__ is not None:
            raise error.__cause__ from None
        raise
    if attribute_targets:
        model.set_attribute_table(datamodule.attribute_table(attribute_targets))
    return model


def _test_results(trainer: L.Trainer, outputs: EvaluationOutputs) -> dict[str, Any]:
    """The test metrics of the last ``trainer.test`` (its ``outputs``), in metrics.json's form."""
    results = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    confusion = outputs.confusion  # [[TN, FP], [FN, TP]], male positive
    return {
        **{name: results.get(name) for name in TEST_METRICS},
        "confusion_matrix": confusion.tolist(),
        "confusion_matrix_layout": "[[true female->female, ->male], [true male->female, ->male]]",
        "test_images": int(confusion.sum()),
    }


def _write_results(
    output_dir: Path,
    record: dict[str, Any],
    datamodule: CelebADataModule,
    test: EvaluationOutputs,
    validation: EvaluationOutputs | None = None,
) -> None:
    """metrics.json, and the test (and validation) predictions of the evaluated weights."""
    images = datamodule.index.images
    write_predictions(output_dir / PREDICTIONS_FILE, test, images)
    if validation is not None:
        write_predictions(output_dir / VAL_PREDICTIONS_FILE, validation, images)
    write_json(output_dir / METRICS_FILE, record)
    log.info(
        "test accuracy %.4f -> %s", record["test/acc"] or float("nan"), output_dir / METRICS_FILE
    )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test the best checkpoint, and write the run's results; returns metrics.json.

    With ``resume=true`` a finished run is skipped and an unfinished one continues from its
    ``last.ckpt``."""
    started = time.perf_counter()
    validate(cfg, TrainSchema)  # before anything is read or written
    output_dir = _output_dir(cfg)
    checkpoint_dir = Path(cfg.paths.checkpoint_dir)
    # A first look before the folder's lock, quiet: while another process holds the folder,
    # its train.log is the holder's, and this process may be refused.
    start = plan_start(cfg, output_dir, checkpoint_dir, quiet=True)
    if start.finished is None:
        with _held(output_dir):
            # Decided again under the lock: another process may have finished it meanwhile.
            start = plan_start(cfg, output_dir, checkpoint_dir)
            if start.finished is None:
                return _train_held(cfg, start, started)
    leave_folder_untouched(output_dir)
    say(f"{output_dir}: finished earlier (status ok), skipped.")
    return start.finished


def _held(output_dir: Path) -> contextlib.AbstractContextManager:
    """The run folder's lock, held by rank 0 (the other ranks of a DDP job are its helpers)."""
    return hold_run_folder(output_dir) if global_rank() == 0 else contextlib.nullcontext()


def _train_held(cfg: DictConfig, start: Any, started: float) -> dict[str, Any]:
    output_dir = _output_dir(cfg)
    describe(cfg)  # a run_facts entry that does not resolve fails now, not after training
    # From here to the last result file a stop signal ends the job with status "interrupted"
    # and the checkpoint to resume from: at once outside training, after saving during it.
    stops = StopSignals(cfg.stop_signals)
    if start.checkpoint is not None:
        stops.checkpoint = start.checkpoint
        stops.epoch, stops.step = checkpoint_position(start.checkpoint)
    with stops:
        try:
            return _train(cfg, start, stops, started)
        except TrainingInterrupted as stop:
            # The handler holds once it has stopped the job (StopSignalHandler.stop_now): a
            # second signal now (a double Ctrl-C, SIGTERM after SIGUSR2) is only recorded, not
            # raised inside this write, which would leave no record of the stop.
            if global_rank() == 0 and not stop.finished:
                write_json(output_dir / METRICS_FILE, _interrupted_record(cfg, stop, output_dir))
            raise


def _precision_that_ran(cfg: DictConfig, trainer: L.Trainer) -> dict[str, str]:
    """The run fact naming the numeric precision, as the trainer ran it."""
    facts = cfg.get("run_facts") or {}
    name = next((k for k, key in facts.items() if key == "trainer.precision"), None)
    asked, ran = str(cfg.trainer.precision), str(trainer.precision)
    # Only another number format counts ("32" runs as "32-true": the same).
    if name is None or ran.split("-")[0] == asked.split("-")[0]:
        return {}
    log.warning("trainer.precision=%s ran as %s on this machine.", asked, ran)
    return {name: ran}


def _interrupted_record(cfg: DictConfig, stop: TrainingInterrupted, output_dir: Path) -> dict:
    return {
        "status": "interrupted",
        **describe(cfg),
        "signal": stop.signal_name,
        "checkpoint": str(stop.checkpoint) if stop.checkpoint is not None else None,
        "epoch": stop.epoch,
        "global_step": stop.step,
        "error": str(stop),
        "output_dir": str(output_dir),
    }


def _train(cfg: DictConfig, start: Any, stops: StopSignals, started: float) -> dict[str, Any]:
    output_dir = _output_dir(cfg)
    checkpoint_dir = Path(cfg.paths.checkpoint_dir)
    if global_rank() == 0:
        save_run_config(cfg, output_dir)
    if start.checkpoint is not None:
        log.info("Resuming from %s (step %d).", start.checkpoint, start.resume_step)
    L.seed_everything(cfg.seed, workers=True)
    datamodule: CelebADataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = build_model(cfg, datamodule)  # pretrained weights missing: fails here, not mid-run

    has_val = len(datamodule.datasets["val"]) > 0
    loggers = build_loggers(cfg, start.resume_step, resuming=start.checkpoint is not None)
    log_run_facts(loggers, describe(cfg), model.hparams)
    callbacks = [  # a callback set to null (callbacks.ema: null) is off
        instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None
    ]
    if not loggers:  # logger=none: nothing to show a learning rate in (Lightning would refuse)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    checkpoints = [c for c in callbacks if isinstance(c, L.pytorch.callbacks.ModelCheckpoint)]
    checkpoint = checkpoints[0] if checkpoints else None  # callbacks.model_checkpoint: best.ckpt
    if datamodule.final_fit:
        log.info(
            "data.final_fit=true: the %d validation images train too; the last epoch is tested.",
            datamodule.final_fit_images,
        )
    elif not has_val:
        # seed_protocol has no validation part: keep the last epoch's weights instead.
        log.warning("No validation images (split=%s): testing the last epoch.", cfg.data.split)
    if checkpoint is not None and not has_val:
        checkpoint.monitor = None
    throughput, test_throughput = TrainingThroughput(), TestThroughput()
    last_path = checkpoint_dir / LAST_CHECKPOINT
    # last.ckpt has one writer: LastCheckpoint takes every ModelCheckpoint's save_last (each
    # wrote it only in epochs it saved in) and saves at every epoch's end.
    asking = [c for c in checkpoints if c.save_last]
    save_last = bool(asking)
    weights_only = any(c.save_weights_only for c in asking)  # those asking for last.ckpt
    for other in checkpoints:
        other.save_last = False
    if weights_only:
        log.warning(
            "model_checkpoint.save_weights_only=true: last.ckpt holds weights only, so this "
            "run cannot be resumed (set it to false to resume)."
        )
    last_checkpoint = LastCheckpoint(
        last_path,
        cfg.checkpoint_every_n_steps,
        stops,
        at_epoch_end=save_last,
        weights_only=weights_only,
    )
    fault = cfg.get("fault") and cfg.fault.kill_at_step is not None
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=[
            last_checkpoint.writer,  # first: see LastCheckpoint
            *callbacks,
            throughput,
            test_throughput,
            ValidationConfusionMatrix(),
            ResumeState(),
            last_checkpoint,
            *([kill_at_step(cfg.fault.kill_at_step, cfg.fault.how)] if fault else []),
        ],
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        **({} if has_val else {"limit_val_batches": 0, "num_sanity_val_steps": 0}),
    )
    trainer.fit(model, datamodule=datamodule, ckpt_path=start.checkpoint)
    # Training is over: a stop while testing resumes from the end of training, if saved.
    stops.checkpoint = last_path if last_path.is_file() else None
    stops.epoch, stops.step = trainer.current_epoch, trainer.global_step
    fit_seconds = time.perf_counter() - started

    use_best = bool(checkpoint and checkpoint.monitor and checkpoint.best_model_path)
    trainer.test(model, datamodule=datamodule, ckpt_path="best" if use_best else None)
    test = model.evaluation("test")
    test_results = _test_results(trainer, test)  # before predict replaces callback_metrics
    validation = None
    if has_val:  # the evaluated weights' validation predictions, for threshold tuning
        trainer.predict(model, datamodule=datamodule, return_predictions=False)
        validation = model.evaluation("predict")
    record = {
        "status": "ok",
        **describe(cfg),
        # What ran, not what was asked: Lightning runs 16-mixed as bf16-mixed on a CPU.
        **_precision_that_ran(cfg, trainer),
        **test_results,
        "epochs_trained": trainer.current_epoch,
        "evaluated_checkpoint": (
            checkpoint.best_model_path
            if use_best
            else _kept_checkpoint_of_the_end(checkpoint, model)
        ),
        "best_val": float(checkpoint.best_model_score) if use_best else None,
        "monitor": checkpoint.monitor if use_best else None,
        "params": model.parameter_count(inference=True),
        "params_training": model.parameter_count(inference=False),
        "train_images_per_second": throughput.images_per_second,
        "train_seconds": throughput.seconds,
        "test_images_per_second": test_throughput.images_per_second,
        "fit_seconds": fit_seconds,
        "wall_seconds": time.perf_counter() - started,
        "world_size": trainer.world_size,
        "data_root": str(datamodule.root),
        "output_dir": str(output_dir),
    }
    stops.held = True  # the results are written whole; a stop signal now ends the job after
    if trainer.is_global_zero:
        _write_results(output_dir, record, datamodule, test, validation)
        # A metric a run could not compute (AUROC of a one-class test part) is left out,
        # not shown as 0.0.
        finite = {k: record[k] for k in TEST_METRICS if _finite(record[k])}
        log_results(
            trainer.loggers,
            describe(cfg),
            finite,
            test.confusion,
            trainer.global_step,
        )
    close_loggers(trainer.loggers)
    if trainer.is_global_zero and not _in_multirun():
        try:  # a summary that cannot be made must not turn a finished run into a failed one
            say(where_results_are(record, cfg))
        except Exception:  # noqa: BLE001
            log.warning("Could not print where the results are:", exc_info=True)
    if stops.requested is not None:
        stop = stops.stop_now()
        stop.finished = True  # metrics.json says ok: nothing is left to resume
        raise stop
    return record


def _kept_checkpoint_of_the_end(
    checkpoint: L.pytorch.callbacks.ModelCheckpoint | None, model: GenderClassifier
) -> str:
    """What a run without a monitor (no validation part: a final fit, seed_protocol) tested:
    the model's weights as training left them. best.ckpt (saved at every epoch's end without
    a monitor) is named as the tested model when it holds exactly those weights, so the demo,
    heat maps and eval.py can use it; otherwise "last epoch" (no file keeps them: an EMA's
    average not swapped in after a resume, a save skipped, ...)."""
    kept = Path(checkpoint.best_model_path) if checkpoint and checkpoint.best_model_path else None
    if kept is None or not kept.is_file():
        return "last epoch"
    saved = torch.load(kept, map_location="cpu", mmap=True, weights_only=True).get("state_dict")
    tested = model.state_dict()
    same = saved is not None and saved.keys() == tested.keys()
    same = same and all(torch.equal(saved[name], value.cpu()) for name, value in tested.items())
    return str(kept) if same else "last epoch"


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(value)


def _shown(path: str | Path) -> str:
    """``path`` relative to the current folder when it is inside it: shorter to read and type."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def where_results_are(record: dict[str, Any], cfg: DictConfig) -> str:
    """What a finished single run prints last: its result files, its checkpoint, how to see
    it in TensorBoard and a next command to try."""
    output_dir = Path(record["output_dir"])
    checkpoint = record["evaluated_checkpoint"]
    if not Path(checkpoint).is_file():  # "last epoch": no best.ckpt (no validation part)
        last = Path(cfg.paths.checkpoint_dir) / LAST_CHECKPOINT
        checkpoint = str(last) if last.is_file() else None
    accuracy = record["test/acc"]
    in_clone = PROJECT_ROOT is not None and Path.cwd().resolve() == PROJECT_ROOT.resolve()
    # `make tensorboard` shows outputs/ of the clone; a run written elsewhere is shown alone.
    in_outputs = output_dir.resolve().is_relative_to(Path(cfg.paths.log_dir).resolve())
    tensorboard = (
        "make tensorboard"
        if in_clone and in_outputs
        else f"tensorboard --logdir {_shown(output_dir)}"
    )
    python = _shown(sys.executable)
    predict, train = (
        (f"{python} predict.py", f"{python} train.py")
        if in_clone
        else ("celeba-gender-predict", "celeba-gender-train")
    )
    lines = [
        "",
        f"Done: test accuracy {accuracy:.3f} on {record['test_images']} images "
        f"({record['model']}, {record['treatment']}, {record['epochs_trained']} epochs, "
        f"{record['wall_seconds']:.0f} s)."
        if accuracy is not None
        else "Done.",
        f"  run folder:  {_shown(output_dir)}/",
        f"  results:     {_shown(output_dir / METRICS_FILE)} (all metrics), "
        f"{PREDICTIONS_FILE} (one row per test image)",
    ]
    if checkpoint:
        lines.append(f"  checkpoint:  {_shown(checkpoint)}")
    lines += [
        f"  curves, hparams, confusion matrix: {tensorboard}, then open http://localhost:6006",
        "Next:",
    ]
    if checkpoint:
        lines.append(
            f"  label your photos:  {predict} ckpt_path={_shown(checkpoint)} input=photos/"
        )
    lines.append(
        f"  the 2-core recipe on a CelebA copy:  CELEBA_ROOT=/path/to/celeba {train} "
        "experiment=cpu_quick"
    )
    return "\n".join(lines)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test a trained checkpoint on any CelebA copy; writes the same metrics.json."""
    started = time.perf_counter()
    validate(cfg, EvalSchema)
    output_dir = _output_dir(cfg)
    checkpoint = Path(cfg.ckpt_path).expanduser()
    if not checkpoint.is_file():
        raise DataError(f"Checkpoint {checkpoint} does not exist; pass ckpt_path=PATH/TO/best.ckpt")
    model = load_classifier(str(checkpoint))
    if cfg.get("flip_tta") is not None:
        model.hparams.flip_tta = bool(cfg.flip_tta)
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    if cfg.use_checkpoint_transform:
        # The crop, size and normalisation the model was trained with.
        data_cfg.update(model.hparams.get("eval_transform") or {})
    datamodule: CelebADataModule = instantiate(data_cfg)
    test_throughput = TestThroughput()
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[test_throughput])
    trainer.test(model, datamodule=datamodule)
    record = {
        "status": "ok",
        "checkpoint": str(checkpoint),
        "model": model.hparams.backbone,
        "loss": model.hparams.loss,
        "data_root": str(datamodule.root),
        "split": datamodule.split,
        "image_size": datamodule.image_size,
        **_test_results(trainer, model.evaluation("test")),
        **_training_overlap(model.trained_on, datamodule, checkpoint),
        "params": model.parameter_count(inference=True),
        "test_images_per_second": test_throughput.images_per_second,
        "wall_seconds": time.perf_counter() - started,
    }
    if trainer.is_global_zero:
        with _held(output_dir):
            _write_results(output_dir, record, datamodule, model.evaluation("test"))
    return record


def _training_overlap(
    trained_on: dict[str, Any] | None, datamodule: CelebADataModule, checkpoint: Path
) -> dict[str, Any]:
    """eval.py's record of what the checkpoint trained on, and how many of the test images were
    in its training part (None: the checkpoint does not say); a warning when any were. The
    whole part counts, even where limits or a sampler left some images undrawn: it errs high."""
    if trained_on is None:
        return {"checkpoint_final_fit": None, "test_images_seen_in_training": None}
    seen = datamodule.images_seen_in_training(trained_on, "test")
    if seen:
        trained = (
            "its training and validation parts (a final fit)"
            if trained_on.get("final_fit")
            else "its training part"
        )
        say(
            f"warning: {seen} of the {len(datamodule.parts['test'])} test images (the same "
            f"files' bytes) were in what trained {checkpoint}, {trained}: these metrics "
            "overstate how it does on faces it has not seen. Test it on its own run's test "
            f"part (data.root={trained_on.get('root')} data.split={trained_on.get('split')} "
            f"data.split_seed={trained_on.get('split_seed')}, and that run's other data.* "
            "settings) or on another copy."
        )
    return {
        "checkpoint_final_fit": bool(trained_on.get("final_fit")),
        "test_images_seen_in_training": seen,
    }


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _guarded(
    job: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig, objective: str
) -> float | None:
    """Run ``job`` and return its record's ``objective`` (what a Hydra sweeper optimises): user
    errors end in one line; in a sweep, a failure is recorded and skipped."""
    environ_before = dict(os.environ)
    output_dir = _output_dir(cfg)
    try:
        return job(cfg).get(objective)
    except TrainingInterrupted as stop:
        # The run saved its checkpoint and status; hand the signal to whoever handled it
        # before (a cluster launcher requeues the job here), then stop: a sweep run in this
        # process stops too, since the signal asked the process to end.
        stop.forward()
        if stop.finished:
            say(f"{stop.signal_name} came as the run finished; its results are complete.")
        else:
            say(f"{stop}. Continue with the same command and resume=true.")
        raise SystemExit(128 + stop.signum) from None
    except (ConfigError, ResumeRefused) as error:
        # A value the schema does not allow, or a folder holding another run's results:
        # nothing was read or written, and the folder stays exactly as it was.
        leave_folder_untouched(output_dir)
        if _in_multirun():
            said = f"error: {error}" if isinstance(error, ConfigError) else str(error)
            say(f"{output_dir}: not run. {said}")
            if global_rank() == 0:
                record_refusal(output_dir, said)  # its folder may still say status ok
            return None
        say(f"error: {error}")
        raise SystemExit(2) from None
    except Exception as error:  # noqa: BLE001 - recorded, then re-raised or reported
        if global_rank() == 0:
            try:
                context = describe(cfg)
            except Exception:  # noqa: BLE001 - a broken config must not hide the real error
                context = {}
            try:
                write_failure(output_dir, error, context)
            except OSError as unwritten:  # a full disk: the error itself still gets shown
                log.warning("Could not record the failure in %s: %s", output_dir, unwritten)
        if _in_multirun():
            log.exception(
                "Job failed; recorded in %s. The sweep goes on.", output_dir / METRICS_FILE
            )
            return None
        if isinstance(error, USER_ERRORS):
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
    finally:
        reset_distributed_state(environ_before)
        # A sweep runs every job in this process: free the job's model, optimizer state and
        # trainer (reference cycles) before the next job allocates its own.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def run_training(cfg: DictConfig) -> float | None:
    """Train and test one run; returns the best validation ``monitor`` value, so that a Hydra
    sweeper tunes on validation, never on the test part."""
    quiet_third_party_output()
    return _guarded(train, cfg, objective="best_val")


def run_evaluation(cfg: DictConfig) -> float | None:
    quiet_third_party_output()
    return _guarded(evaluate, cfg, objective="test/acc")
