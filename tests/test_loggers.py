"""Experiment loggers (conf/logger/), the run folder's metrics.csv, and what TensorBoard shows.

One short run with TensorBoard, CSV, MLflow and W&B at once (and a fifth logger that cannot
start), each read back with its own reader; TensorBoard's HParams table and tag order read
from the default run's event files.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import time
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
import yaml
from conftest import _unavailable, delete_big_files, run_script
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from test_resume import RUN
from torch.utils.data import DataLoader, TensorDataset

from celeba_gender.training.callbacks import EpochMetricsCSV

TEST_METRICS = ["test/acc", "test/precision", "test/recall", "test/f1", "test/auroc", "test/loss"]
# What a researcher compares runs by: each a column of TensorBoard's HParams table.
STUDY_FACTS = {"model", "treatment", "image_size", "lr", "batch_size", "seed", "experiment"}
TICKED = {"model", "treatment", "image_size", "lr", "seed"}  # conf/logger/tensorboard.yaml
UNREACHABLE = (
    "+logger.unreachable={_target_:lightning.pytorch.loggers.MLFlowLogger,"
    "tracking_uri:'sqlite:////dev/null/mlflow.db'}"
)


def _require(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        _unavailable(f"{package} is not installed (pip install 'celeba-gender[loggers]')")


@pytest.fixture(scope="module")
def many_loggers(run_env, tmp_path_factory):
    """The smoke run with four loggers at once and a fifth whose store cannot be opened."""
    root = tmp_path_factory.mktemp("loggers")
    folder = root / "run"
    env = {
        **run_env,
        "WANDB_MODE": "offline",
        **{f"WANDB_{name}_DIR": str(root / "wandb_home") for name in ("CACHE", "CONFIG", "DATA")},
    }
    result = run_script(
        "train.py",
        "experiment=smoke",
        "logger=[tensorboard,csv,mlflow,wandb]",
        UNREACHABLE,
        f"paths.log_dir={root}",
        f"hydra.run.dir={folder}",
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    yield folder, result
    delete_big_files(root)


def _metrics(folder: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["status"] == "ok", metrics.get("error")
    return metrics


def test_several_loggers_at_once_and_one_that_cannot_start(many_loggers):
    folder, result = many_loggers
    metrics = _metrics(folder)
    said = result.stdout + result.stderr
    assert "logger.unreachable is off for this run:" in said
    assert "could not record" not in said  # every other logger took its facts and results
    # Lightning's CSV logger: every value by step, and the run's facts.
    logged = pd.read_csv(folder / "csv" / "metrics.csv")
    assert logged["test/acc"].dropna().iloc[-1] == pytest.approx(metrics["test/acc"])
    facts = yaml.safe_load((folder / "csv" / "hparams.yaml").read_text())
    assert {k: facts[k] for k in ("model", "treatment", "image_size", "seed")} == {
        "model": "resnet18",
        "treatment": "scratch_bce",
        "image_size": 32,
        "seed": 42,
    }
    assert facts["module"]["backbone"] == "resnet18"


def test_mlflow_holds_the_facts_and_test_metrics(many_loggers):
    _require("mlflow")
    from mlflow.tracking import MlflowClient

    folder, _ = many_loggers
    metrics = _metrics(folder)
    client = MlflowClient(f"sqlite:///{folder.parent / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("celeba-gender").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "resnet18_scratch_bce_seed42"
    assert run.data.tags["output_dir"] == str(folder)
    params = run.data.params
    assert {k: params[k] for k in ("model", "treatment", "image_size", "lr", "seed")} == {
        "model": "resnet18",
        "treatment": "scratch_bce",
        "image_size": "32",
        "lr": str(metrics["lr"]),
        "seed": "42",
    }
    assert params["module/backbone"] == "resnet18"  # the module's own arguments beside them
    for name in TEST_METRICS:
        assert run.data.metrics[name] == pytest.approx(metrics[name]), name
    assert {"val/acc", "train/loss_epoch"} <= set(run.data.metrics)


def test_wandb_writes_an_offline_run_in_the_run_folder(many_loggers):
    _require("wandb")
    folder, _ = many_loggers
    (run,) = (folder / "wandb").glob("offline-run-*/run-*.wandb")
    # W&B's record file (protobuf): the config's names and values, the metrics' names.
    data = run.read_bytes()
    for text in (b"treatment", b"scratch_bce", b"image_size", b"test/acc", b"val/acc"):
        assert text in data, text


def _hparams(folder: Path) -> tuple:
    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    content = {
        tag: plugin_data_pb2.HParamsPluginData.FromString(data)
        for tag, data in events.PluginTagToContent("hparams").items()
    }
    return (
        events,
        content["_hparams_/experiment"].experiment,
        content["_hparams_/session_start_info"].session_start_info,
    )


def test_tensorboard_hparams_table_shows_what_the_study_compares(smoke_run):
    events, experiment, start = _hparams(smoke_run)
    metrics = _metrics(smoke_run)
    values = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    assert set(values) >= STUDY_FACTS
    assert (values["model"], values["treatment"], values["experiment"]) == (
        "resnet18",
        "scratch_bce",
        "smoke",
    )
    assert (values["image_size"], values["seed"], values["batch_size"]) == (32, 42, 4)
    # TensorBoard ticks the first five columns: differing ones first, then by name.
    infos = sorted(experiment.hparam_infos, key=lambda i: (not i.differs, i.name))
    assert {i.name for i in infos[:5]} == TICKED
    # Metrics under their own names, each the last value of the scalar it names.
    assert [m.display_name for m in experiment.metric_infos] == TEST_METRICS
    for info in experiment.metric_infos:
        shown = events.Scalars(info.name.tag)[-1].value
        assert shown == pytest.approx(metrics[info.display_name]), info.display_name


def _tensorboard_order(tag: str) -> tuple:
    """TensorBoard's order of tags (its frontend's compareTagNames): "/" and digits before
    any other character, the rest by character code."""
    return tuple((0, c) if c == "/" or c.isdigit() else (1, c) for c in tag)


def test_tensorboard_opens_on_the_train_and_val_curves(smoke_run):
    events = EventAccumulator(str(smoke_run / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"] + events.Tags()["images"]
    assert "epoch" not in tags and not [t for t in tags if t.startswith("hp/")]
    # The Scalars page groups tags by what precedes the first "/" and opens the first two.
    groups = list(dict.fromkeys(t.split("/", 1)[0] for t in sorted(tags, key=_tensorboard_order)))
    assert groups[:2] == ["train", "val"], groups
    assert len(events.Scalars("val/acc")) == 1  # one epoch: a curve's point


def test_a_logger_failing_at_the_end_is_a_warning_and_the_others_still_record(tmp_path, caplog):
    from lightning.pytorch.loggers import CSVLogger

    from celeba_gender.training.loggers import StudyTensorBoardLogger, log_results

    broken = CSVLogger(tmp_path / "csv", name="", version="")
    broken.log_metrics({"val/acc": 0.5}, step=0)
    shutil.rmtree(tmp_path / "csv")
    (tmp_path / "csv").write_text("a file where the logger's folder was\n")
    tensorboard = StudyTensorBoardLogger(tmp_path, name="tensorboard", version="")
    log_results(
        [broken, tensorboard],
        {"model": "resnet18", "seed": 42},
        {"test/acc": 0.75},
        torch.tensor([[1, 0], [1, 2]]),
        step=3,
    )
    assert "CSVLogger could not record the run's results (NotADirectoryError" in caplog.text
    tensorboard.finalize("success")
    _, experiment, start = _hparams(tmp_path)
    assert start.hparams["model"].string_value == "resnet18"
    assert [m.display_name for m in experiment.metric_infos] == ["test/acc"]


@pytest.mark.slow
def test_metrics_csv_lists_each_epoch_once_after_a_resume(run_env, tmp_path):
    """Killed after epoch 0's row, resumed from a checkpoint inside epoch 0 (step 4): each
    epoch listed once, and the resumed attempt logs into the MLflow and W&B runs the first
    opened, not new ones."""
    _require("mlflow")
    _require("wandb")
    folder = tmp_path / "run"
    run = [o for o in RUN if not o.startswith("callbacks.model_checkpoint.save_last")]
    run += ["callbacks.model_checkpoint.save_last=false", f"hydra.run.dir={folder}"]
    run += ["logger=[tensorboard,mlflow,wandb]", f"paths.log_dir={tmp_path}"]
    env = {**run_env, "WANDB_MODE": "offline"}
    env |= {
        f"WANDB_{name}_DIR": str(tmp_path / "wandb_home") for name in ("CACHE", "CONFIG", "DATA")
    }
    killed = run_script("train.py", *run, "fault.kill_at_step=7", env=env)
    assert killed.returncode == -signal.SIGKILL
    assert list(pd.read_csv(folder / "metrics.csv")["epoch"]) == [0]
    first_runs = json.loads((folder / "logger_runs.json").read_text())

    started = time.monotonic()
    resumed = run_script("train.py", *run, "resume=true", env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(step 4)" in resumed.stdout
    epochs = pd.read_csv(folder / "metrics.csv")
    assert list(epochs["epoch"]) == [0, 1, 2]
    assert list(epochs["step"]) == [6, 12, 18]
    # Every row is the resumed attempt's; epoch 0, entered mid-way, counts its seconds from the
    # resume (Lightning skips on_train_epoch_start there: it was the time since boot).
    seconds = epochs["epoch_seconds"]
    assert (seconds > 0).all() and seconds.sum() < time.monotonic() - started, list(seconds)
    assert epochs["val/acc"].max() == pytest.approx(_metrics(folder)["best_val"])
    assert {"lr", "epoch_seconds", "train/acc", "train/loss_epoch", "val/loss"} <= set(epochs)
    from mlflow.tracking import MlflowClient

    assert json.loads((folder / "logger_runs.json").read_text()) == first_runs
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (one,) = client.search_runs([client.get_experiment_by_name("celeba-gender").experiment_id])
    assert one.info.run_id == first_runs["mlflow"] and one.info.status == "FINISHED"
    assert one.data.metrics["test/acc"] == pytest.approx(_metrics(folder)["test/acc"])
    attempts = sorted((folder / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(attempts) == 2  # offline: one folder per attempt, one run id (`wandb sync`)
    assert {path.stem for path in attempts} == {f"run-{first_runs['wandb']}"}


def test_metrics_csv_leaves_validation_empty_in_epochs_without_one(tmp_path):
    """check_val_every_n_epoch=2: epochs 0 and 2 have no validation; their rows leave val/
    empty instead of repeating epoch 1's values (Lightning's callback_metrics keep them)."""

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch: list, index: int) -> torch.Tensor:
            loss = self.layer(batch[0]).pow(2).mean()
            self.log("train/loss", loss, on_epoch=True, on_step=False)
            return loss

        def validation_step(self, batch: list, index: int) -> None:
            self.log("val/epoch", float(self.current_epoch))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = L.Trainer(
        max_epochs=3, check_val_every_n_epoch=2, callbacks=[EpochMetricsCSV(tmp_path / "m.csv")],
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=1,
    )  # fmt: skip
    trainer.fit(Tiny(), data, data)
    rows = pd.read_csv(tmp_path / "m.csv")
    assert list(rows["epoch"]) == [0, 1, 2] and rows["train/loss"].notna().all()
    assert rows["val/epoch"].tolist()[1] == 1.0
    assert rows["val/epoch"].isna().tolist() == [True, False, True]


def test_an_attempt_that_starts_afresh_opens_a_new_mlflow_run(run_env, tmp_path):
    """Killed before its first checkpoint, the folder has logger_runs.json but nothing to
    resume from: the next attempt starts at step 0, so it logs into a new MLflow run, not into
    the first one (whose steps it would repeat)."""
    _require("mlflow")
    folder = tmp_path / "run"
    run = [
        o for o in RUN if not o.startswith(("callbacks.model_checkpoint.save_last", "checkpoint_"))
    ]
    run += ["callbacks.model_checkpoint.save_last=false", f"hydra.run.dir={folder}"]
    run += ["logger=[mlflow]", f"paths.log_dir={tmp_path}", "trainer.max_epochs=1"]
    killed = run_script("train.py", *run, "fault.kill_at_step=2", env=run_env)
    assert killed.returncode == -signal.SIGKILL
    assert not (folder / "checkpoints" / "last.ckpt").exists()
    first = json.loads((folder / "logger_runs.json").read_text())["mlflow"]

    again = run_script("train.py", *run, "resume=true", env=run_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "starting fresh" in again.stdout + again.stderr
    second = json.loads((folder / "logger_runs.json").read_text())["mlflow"]
    assert second != first
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    finished = client.get_run(second)
    assert finished.info.status == "FINISHED"
    assert finished.data.metrics["test/acc"] == pytest.approx(_metrics(folder)["test/acc"])
