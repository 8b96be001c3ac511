"""The config schema (celeba_gender/config_schema.py): every shipped config passes it; a value
it does not allow stops train.py before anything runs, with one line naming key and value."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_script
from hydra import compose, initialize_config_dir

import celeba_gender.config  # noqa: F401  (resolvers)
from celeba_gender.config_schema import ConfigError, EvalSchema, TrainSchema, validate

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(*overrides: str, name: str = "config"):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=list(overrides))


@pytest.mark.parametrize("experiment", [None, *_options("experiment")])
def test_every_shipped_config_passes_the_schema(experiment):
    chosen = [f"experiment={experiment}"] if experiment else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for model in _options("model"):
            for treatment in _options("treatment"):
                overrides = [*chosen, f"model={model}", f"treatment={treatment}"]
                validate(compose("config", overrides=overrides), TrainSchema)
        for group in ("trainer", "scheduler", "optimizer", "logger", "data", "callbacks"):
            for option in _options(group):
                validate(compose("config", overrides=[*chosen, f"{group}={option}"]))
        validate(compose("eval", overrides=["ckpt_path=x.ckpt"]), EvalSchema)


BAD = [
    ("data.batch_size=abc", "data.batch_size=abc", "an integer >= 1"),
    ("data.batch_size=0", "data.batch_size=0", "an integer >= 1"),
    ("data.batch_size=-8", "data.batch_size=-8", "an integer >= 1"),
    ("data.eval_batch_size=2.5", "data.eval_batch_size=2.5", "an integer >= 1 or null"),
    ("trainer.max_epochs=-1", "trainer.max_epochs=-1", "an integer >= 1"),
    ("optimizer.lr=-0.001", "optimizer.lr=-0.001", "a number > 0"),
    ("optimizer.lr=fast", "optimizer.lr=fast", "a number > 0"),
    ("data.split=random", "data.split=random", "one of identity, seed_protocol, official, all"),
    ("data.balance=smote", "data.balance=smote", "one of none, undersample"),
    ("trainer.precision=17", "trainer.precision=17", "16-mixed"),
    ("trainer.precision=fp16", "trainer.precision=fp16", "bf16-mixed"),
    ("treatment.loss=mse", "treatment.loss=mse", "one of bce, ce"),
    ("model.name=resnet9", "model.name=resnet9", "torchvision.models.list_models()"),
    ("monitor=val/accuracy", "monitor=val/accuracy", "val/acc"),
    ("data.split_fractions=[0.9,0.2,0.1]", "data.split_fractions=[0.9, 0.2, 0.1]", "sum"),
    ("mixup_alpha=-1", "mixup_alpha=-1", "a number >= 0"),
    ("resume=perhaps", "resume=perhaps", "true or false"),
    ("stop_signals=[SIGSTOP]", "stop_signals=['SIGSTOP']", "SIGTERM"),
]


@pytest.mark.parametrize(("override", "shown", "allowed"), BAD)
def test_a_value_the_schema_does_not_allow_is_named_with_what_is_allowed(override, shown, allowed):
    with pytest.raises(ConfigError) as raised:
        validate(_compose("experiment=smoke", override))
    message = str(raised.value)
    assert message.startswith(f"{shown} is not allowed: expected ")
    assert allowed in message and "\n" not in message


def test_keys_a_group_does_not_have_are_skipped_and_its_own_are_checked():
    validate(_compose("optimizer=adam"))  # no momentum: nothing to check
    with pytest.raises(ConfigError, match="optimizer.momentum=1.5"):
        validate(_compose("optimizer=sgd", "optimizer.momentum=1.5"))


def test_the_eval_schema_checks_the_eval_config():
    with pytest.raises(ConfigError, match="data.batch_size=0"):
        validate(_compose("ckpt_path=x.ckpt", "data.batch_size=0", name="eval"), EvalSchema)


@pytest.mark.parametrize(
    "override", ["data.batch_size=abc", "trainer.max_epochs=-1", "trainer.precision=17"]
)
def test_train_py_refuses_a_bad_value_in_one_line_before_anything_runs(override, run_env, tmp_path):
    folder = tmp_path / "run"
    result = run_script("train.py", "experiment=smoke", override, f"hydra.run.dir={folder}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        f"error: {override} is not allowed: expected " + lines[0].split("expected ")[1]
    ]
    assert not (folder / "metrics.json").exists() and not (folder / ".hydra").exists()


def test_a_sweep_reports_every_bad_job_and_launches_none(run_env, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "experiment=smoke",
        "model=resnet18,vgg11",
        "data.batch_size=4,abc",
        f"hydra.sweep.dir={sweep}",
        env=run_env,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error: job 1 (experiment=smoke model=resnet18 data.batch_size=abc): " in result.stderr
    assert "error: job 3 (experiment=smoke model=vgg11 data.batch_size=abc): " in result.stderr
    assert "job 0 " not in result.stderr and "job 2 " not in result.stderr
    assert not sweep.exists()  # nothing launched, not even the sweep folder


def test_without_the_sweep_check_each_bad_job_says_so_and_the_sweep_goes_on(run_env, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "~hydra.callbacks.validate_sweep",
        "experiment=smoke",
        "data.batch_size=abc,0",
        f"hydra.sweep.dir={sweep}",
        env=run_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    for number, value in enumerate(["abc", "0"]):
        folder = next(sweep.glob(f"{number}_*"))
        assert f"{folder}: not run. error: data.batch_size={value} is not allowed" in result.stderr
        assert not (folder / "metrics.json").exists()
