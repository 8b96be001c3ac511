"""Real, short trainings through the real entry points and configs (on CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import forked_python
import pandas as pd
import pytest
import torch
from conftest import SAMPLE
from conftest import run_script as _run
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import celeba_gender.config  # noqa: F401  (resolvers)
from celeba_gender.models import load_classifier, model_names

REPO = Path(__file__).resolve().parents[1]
TEST_METRICS = ("test/acc", "test/precision", "test/recall", "test/f1", "test/auroc")


def _accuracy_from_predictions(folder: Path) -> tuple[float, int]:
    predictions = pd.read_csv(folder / "test_predictions.csv")
    return float(((predictions["p_male"] > 0.5) == (predictions["label"] == 1)).mean()), len(
        predictions
    )


def test_a_run_writes_metrics_predictions_checkpoints_and_tensorboard(smoke_run, sample_root):
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    assert metrics["status"] == "ok"
    assert (metrics["model"], metrics["treatment"], metrics["image_size"]) == (
        "resnet18",
        "scratch_bce",
        32,
    )
    for name in TEST_METRICS:
        assert 0.0 <= metrics[name] <= 1.0, name
    for key in (
        "params",
        "wall_seconds",
        "train_images_per_second",
        "test_images_per_second",
        "seed",
        "epochs_trained",
        "depth",
        "data_root",
    ):
        assert metrics[key] is not None, key
    assert metrics["data_root"] == str(sample_root)
    accuracy, count = _accuracy_from_predictions(smoke_run)
    assert count == metrics["test_images"] == sum(map(sum, metrics["confusion_matrix"]))
    assert metrics["test/acc"] == pytest.approx(accuracy, abs=1e-6)
    assert metrics["evaluated_checkpoint"].endswith("checkpoints/best.ckpt")
    assert Path(metrics["evaluated_checkpoint"]).is_file()

    summary = json.loads((smoke_run / "data_summary.json").read_text())
    assert Path(summary["root"]).resolve() == sample_root.resolve()
    assert summary["shared_identities"] == {"train-val": 0, "train-test": 0, "val-test": 0}

    events = EventAccumulator(str(smoke_run / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {
        "val/acc",
        "val/auroc",
        "train/loss_step",
        "train/acc",
        "~test/acc",  # sorted after train/ and val/ (tests/test_loggers.py)
        "~test/f1",
    } <= scalars
    assert {"val/confusion_matrix", "~test/confusion_matrix"} <= set(events.Tags()["images"])
    # The hparams table, so runs can be compared side by side in TensorBoard.
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")


def test_eval_on_another_copy_writes_the_same_metrics(smoke_run, subset_root, run_env, tmp_path):
    out = tmp_path / "eval"
    result = _run(
        "eval.py",
        f"ckpt_path={smoke_run / 'checkpoints' / 'best.ckpt'}",
        f"data.root={subset_root}",
        "data.split=all",
        f"hydra.run.dir={out}",
        env=run_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_images"] == 4014 and metrics["image_size"] == 32  # the training size
    accuracy, count = _accuracy_from_predictions(out)
    assert count == 4014 and metrics["test/acc"] == pytest.approx(accuracy, abs=1e-6)
    # The embedded sample it trained on is part of the subset: those images are counted and
    # the metrics are said to overstate (the run's own split shares none with its training).
    trained = json.loads((smoke_run / "data_summary.json").read_text())["parts"]["train"]
    assert metrics["checkpoint_final_fit"] is False
    assert metrics["test_images_seen_in_training"] == trained["images"] > 0
    assert f"warning: {trained['images']} of the 4014 test images" in result.stderr
    assert "data.split=identity data.split_seed=42" in result.stderr
    own = tmp_path / "own"
    result = _run(
        "eval.py",
        f"ckpt_path={smoke_run / 'checkpoints' / 'best.ckpt'}",
        f"data.root={SAMPLE}",
        "data.split=identity",
        f"hydra.run.dir={own}",
        env=run_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((own / "metrics.json").read_text())["test_images_seen_in_training"] == 0
    assert "warning" not in result.stderr


def _last_scalar(folder: Path, tag: str) -> float:
    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    return events.Scalars(tag)[-1].value


def test_ddp_with_two_cpu_processes_inside_a_two_job_multirun(run_env, tmp_path):
    # A folder name Hydra's override parser would split unquoted: the child rank's command
    # must still name this job's folder.
    sweep = tmp_path / "sweep dir, [x]=1"
    result = _run(
        "train.py",
        "-m",
        "model=resnet18,googlenet",
        "experiment=smoke",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32",
        "trainer.sync_batchnorm=false",  # SyncBatchNorm needs GPUs
        "trainer.benchmark=false",
        # The whole test part, 29 images with this split: 2 ranks of 15, one image repeated.
        "data.split_seed=3",
        "trainer.limit_test_batches=1.0",
        f"hydra.sweep.dir='{sweep}'",
        env=run_env,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == [
        "0_resnet18_scratch_bce_seed42",
        "1_googlenet_scratch_bce_seed42",
    ]
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["status"] == "ok" and metrics["world_size"] == 2, job
        assert (job / "ddp_rank_1.log").is_file()  # rank 1 ran this job's config, not a sweep
        summary = json.loads((job / "data_summary.json").read_text())
        assert summary["parts"]["test"]["images"] == 29
        # metrics.json, the CSV and TensorBoard count each test image once, whatever the
        # sampler repeated to even out the ranks.
        accuracy, count = _accuracy_from_predictions(job)
        assert count == metrics["test_images"] == sum(map(sum, metrics["confusion_matrix"])) == 29
        assert metrics["test/acc"] == pytest.approx(accuracy, abs=1e-6)
        assert _last_scalar(job, "~test/acc") == pytest.approx(accuracy, abs=1e-6)
        # Validation predictions: uneven shards per rank (no padding in predict), all gathered.
        val = pd.read_csv(job / "val_predictions.csv")
        assert len(val) == val["file_name"].nunique() > 16  # more than one rank's 2 batches of 8
    assert "multirun.yaml" in {p.name for p in sweep.iterdir()}
    assert len(list(sweep.glob("*/.hydra"))) == 2  # no extra sweep or job was started


def test_a_failed_job_is_recorded_and_the_sweep_goes_on(run_env, tmp_path):
    sweep = tmp_path / "sweep"
    result = _run(
        "train.py",
        "-m",
        "treatment=pretrained_bce,scratch_ce",
        "model.allow_download=false",
        "hydra.callbacks.validate_sweep.check_weights=false",  # launch despite missing weights
        "experiment=smoke",
        f"hydra.sweep.dir={sweep}",
        env=run_env,
    )
    failed = json.loads((sweep / "0_resnet18_pretrained_bce_seed42" / "metrics.json").read_text())
    assert failed["status"] == "failed"
    assert failed["error_type"] == "PretrainedWeightsUnavailable"
    assert "resnet18-f37072fd.pth" in failed["error"]
    passed = json.loads((sweep / "1_resnet18_scratch_ce_seed42" / "metrics.json").read_text())
    assert passed["status"] == "ok" and passed["loss"] == "ce"
    # The sweep (Hydra's in-process launcher) ends with its summary and a failing exit code.
    assert result.returncode == 1, result.stderr[-3000:]
    summary = result.stderr[result.stderr.rindex(f"Sweep {sweep}: ") :].splitlines()
    assert summary[0] == f"Sweep {sweep}: 1 ok, 1 failed."
    assert summary[1].startswith(
        "  failed: 0_resnet18_pretrained_bce_seed42 (PretrainedWeightsUnavailable: "
    )
    assert len(summary) == 4 and "Traceback" not in result.stderr


def test_a_multi_task_run_learns_attributes_and_reports_gender_only(run_env, tmp_path):
    folder = tmp_path / "run"
    result = _run(
        "train.py",
        "experiment=smoke",
        "attribute_targets=[all]",
        f"hydra.run.dir={folder}",
        env=run_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["attribute_targets"] == "all"
    accuracy, count = _accuracy_from_predictions(folder)
    assert metrics["test/acc"] == pytest.approx(accuracy, abs=1e-6)
    checkpoint = torch.load(folder / "checkpoints" / "best.ckpt", weights_only=True)
    names = checkpoint["hyper_parameters"]["attribute_targets"]
    assert len(names) == 39 and "Male" not in names
    assert checkpoint["state_dict"]["net.fc.weight"].shape[0] == 1 + 39
    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    assert "train/attribute_loss" in events.Tags()["scalars"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=resnet19"], "Available options in 'model'"),
        (["treatment=finetune"], "Available options in 'treatment'"),
        (["data.root=/no/such/celeba", "experiment=smoke"], "/no/such/celeba does not exist"),
        (["experiment=smoke", "attribute_targets=[Beard]"], "Unknown attribute_targets Beard"),
    ],
)
def test_user_mistakes_end_with_a_clear_message(run_env, tmp_path, overrides, message):
    result = _run("train.py", *overrides, f"hydra.run.dir={tmp_path / 'run'}", env=run_env)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("experiment", ["smoke", "cpu_quick", "study"])
@pytest.mark.parametrize("model", model_names())
def test_experiment_configs_compose_for_every_model(experiment, model):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}", f"model={model}"])
    expected_size = {
        "smoke": cfg.model.min_image_size,
        "cpu_quick": 112,
        "study": cfg.model.image_size,
    }
    assert cfg.data.image_size == expected_size[experiment]
    if experiment == "study":
        assert (cfg.optimizer.lr, cfg.data.batch_size, cfg.trainer.max_epochs) == (1e-4, 32, 25)
        assert cfg.data.image_size == (299 if model == "inception_v3" else 224)


def test_a_job_is_freed_before_the_next_one_starts(tmp_path):
    """Every job of a sweep runs in one process: what a job built in reference cycles (a
    LightningModule and its Trainer are such) must be gone when the next job starts; before
    the fix, the 30-job smoke sweep grew to 19 GB, now it stays near 4 GB."""
    import weakref

    from omegaconf import OmegaConf

    from celeba_gender.training.run import _guarded

    left_behind = []

    def job(cfg):
        model = torch.nn.Linear(1000, 1000)
        model.cycle = {"model": model}  # a reference cycle, as Trainer <-> module make
        left_behind.append(weakref.ref(model))
        return {"test/acc": 1.0}

    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}})
    assert _guarded(job, cfg, objective="test/acc") == 1.0
    assert left_behind[0]() is None


def test_what_a_sweeper_optimises_is_the_best_validation_metric(
    run_env, tmp_path, monkeypatch, caplog
):
    """train.py's main returns this value to Hydra; a sweeper must tune on validation. Also:
    logger=none trains (no learning-rate monitor without a logger), and Lightning's cloud
    advertisement is not printed."""
    from celeba_gender.training.run import run_training

    for name, value in run_env.items():
        monkeypatch.setenv(name, value)
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "experiment=smoke",
                "logger=none",
                "trainer.max_epochs=2",
                "trainer.limit_val_batches=1.0",
                f"paths.output_dir={tmp_path}",
            ],
        )
    returned = run_training(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["monitor"] == "val/acc"
    assert metrics["best_val"] != metrics["test/acc"]  # else this test could not tell them apart
    assert returned == metrics["best_val"]
    # metrics.csv without any logger: one row per epoch.
    epochs = pd.read_csv(tmp_path / "metrics.csv")
    assert list(epochs["epoch"]) == [0, 1]
    assert epochs["val/acc"].max() == pytest.approx(metrics["best_val"])
    assert "GPU available" in caplog.text  # Lightning's own messages are still there
    assert "litlogger" not in caplog.text.lower()


def test_a_new_backbone_is_one_yaml_file(run_env, tmp_path):
    """A backbone the study does not ship, added as one file in a config folder of the
    user's own (Hydra's search path), with one torchvision argument; one more run fact is one
    line too, and reaches metrics.json and the analysis' table."""
    from celeba_gender.analysis.collect import collect_runs

    extra = tmp_path / "my_conf"
    (extra / "model").mkdir(parents=True)
    (extra / "model" / "mobilenet_v3_small.yaml").write_text(
        "defaults:\n"
        "  - /model_base/torchvision@_here_\n"
        "  - _self_\n"
        "name: mobilenet_v3_small\n"
        "family: MobileNet\n"
        "depth: 18\n"
        "kwargs:\n"
        "  dropout: 0.3\n"
    )
    run = tmp_path / "run"
    result = _run(
        "train.py",
        f"hydra.searchpath=[file://{extra}]",
        "model=mobilenet_v3_small",
        "experiment=smoke",
        "+run_facts.dropout=model.kwargs.dropout",
        f"hydra.run.dir={run}",
        env=run_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "ok"
    assert (metrics["model"], metrics["family"], metrics["dropout"]) == (
        "mobilenet_v3_small",
        "MobileNet",
        0.3,
    )
    model = load_classifier(str(run / "checkpoints" / "best.ckpt"))
    assert type(model.net).__name__ == "MobileNetV3"
    assert model.net.classifier[2].p == 0.3 and model.net.classifier[3].out_features == 1
    row = collect_runs(run).iloc[0]
    assert (row["model"], row["family"], row["status"]) == ("mobilenet_v3_small", "MobileNet", "ok")
    assert row["dropout"] == 0.3


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_run_outputs_follow_the_users_umask(umask, run_env, tmp_path):
    """Every file and folder of a run (metrics, CSVs, checkpoints, .hydra, TensorBoard, logs)
    has the permissions the user's umask gives: never owner-only, never more than it allows."""
    import os
    import stat
    import sys

    folder = tmp_path / "run"
    overrides = ["experiment=smoke", "callbacks.model_checkpoint.save_last=true"]
    result = forked_python.run(
        [sys.executable, str(REPO / "train.py"), *overrides, f"hydra.run.dir={folder}"],
        cwd=REPO,
        env={**{k: v for k, v in os.environ.items() if k != "CELEBA_ROOT"}, **run_env},
        capture_output=True,
        text=True,
        timeout=600,
        umask=umask,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    paths = [folder, *folder.rglob("*")]
    names = {p.relative_to(folder).as_posix() for p in paths}
    assert {"metrics.json", "test_predictions.csv", "checkpoints/last.ckpt", "train.log"} <= names
    assert {".hydra/config.yaml", "tensorboard"} <= names
    wrong = {
        p.relative_to(folder).as_posix(): oct(stat.S_IMODE(p.stat().st_mode))
        for p in paths
        if stat.S_IMODE(p.stat().st_mode) != (0o777 if p.is_dir() else 0o666) & ~umask
    }
    assert wrong == {}


def test_metrics_record_the_precision_that_ran(run_env, tmp_path):
    folder = tmp_path / "run"
    # On a CPU Lightning runs 16-bit mixed precision as bfloat16.
    result = _run(
        "train.py",
        "experiment=smoke",
        "trainer.precision=16-mixed",
        "trainer.limit_test_batches=1",
        "trainer.limit_predict_batches=1",
        f"hydra.run.dir={folder}",
        env=run_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["numeric_precision"] == "bf16-mixed"
    assert "trainer.precision=16-mixed ran as bf16-mixed" in result.stdout + result.stderr


def test_a_run_without_a_monitor_names_best_ckpt_only_when_it_holds_the_tested_weights(tmp_path):
    """A final fit tests the weights training ended with. best.ckpt is named as the tested
    model only when it holds exactly those: an EMA's average not swapped back in after a
    resume at the end, say, leaves other weights in the model than in best.ckpt."""
    from types import SimpleNamespace

    from celeba_gender.training.run import _kept_checkpoint_of_the_end

    model = torch.nn.Linear(3, 2)
    kept = tmp_path / "best.ckpt"
    torch.save({"global_step": 8, "state_dict": model.state_dict()}, kept)
    checkpoint = SimpleNamespace(best_model_path=str(kept))
    assert _kept_checkpoint_of_the_end(checkpoint, model) == str(kept)
    with torch.no_grad():
        model.bias.add_(1e-6)  # the same step, other weights
    assert _kept_checkpoint_of_the_end(checkpoint, model) == "last epoch"
    assert _kept_checkpoint_of_the_end(SimpleNamespace(best_model_path=""), model) == "last epoch"
    assert _kept_checkpoint_of_the_end(None, model) == "last epoch"
