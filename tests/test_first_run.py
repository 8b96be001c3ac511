"""A newcomer's first commands: `make train` and `make test` set up a fresh clone themselves,
`make train` trains the first-run recipe and says where everything is, TensorBoard has the
run's curves, hparams and confusion matrices, and no third-party noise is printed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import run_script
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parents[1]
NOISE = ("Tip:", "litmodels", "litlogger", "LeafSpec", 'ckpt_path="best")` is called')


def _make(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    environment = {**os.environ, **(env or {})}
    environment.pop("MAKEFLAGS", None)
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=environment,
        timeout=timeout,
    )


def _installed_venv(folder: Path) -> Path:
    """A venv that `make setup` has installed: this interpreter as its python, and the
    install stamp, newer than pyproject.toml."""
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (folder / "bin" / "python").chmod(0o755)
    (folder / ".installed").touch()
    return folder


def test_a_fresh_clone_sets_itself_up_on_its_first_command_only(tmp_path):
    venv = tmp_path / "venv"
    for target in ("train", "test"):
        plan = _make("-n", target, f"VENV={venv}").stdout
        assert f"-m venv {venv}" in plan, plan
        assert "pip install --quiet -e '.[dev]'" in plan and f"touch {venv}/.installed" in plan
        # The install comes before the command that needs it.
        assert plan.index("pip install --quiet -e") < plan.index(
            "train.py" if target == "train" else "ruff check"
        )
    _installed_venv(venv)
    again = _make("-n", "train", f"VENV={venv}").stdout
    assert "pip install" not in again and "-m venv" not in again
    assert again.strip() == f"{venv}/bin/python train.py experiment=first_run"
    # pyproject.toml changed since the install: installed again, the venv kept.
    os.utime(venv / ".installed", (0, 0))
    changed = _make("-n", "test", f"VENV={venv}").stdout
    assert "pip install --quiet -e '.[dev]'" in changed and "-m venv" not in changed
    # `make setup` installs whenever asked; ARGS and EXPERIMENT still reach train.py.
    (venv / ".installed").touch()
    assert "pip install --quiet -e" in _make("-n", "setup", f"VENV={venv}").stdout
    plan = _make("-n", "train", f"VENV={venv}", "EXPERIMENT=cpu_quick", "ARGS=seed=3").stdout
    assert plan.strip() == f"{venv}/bin/python train.py experiment=cpu_quick seed=3"
    plan = _make("-n", "train", f"VENV={venv}", "EXPERIMENT=").stdout
    assert plan.strip() == f"{venv}/bin/python train.py"


def test_ci_runs_the_readme_commands():
    """The README's first command block is the two commands, and CI runs exactly them."""
    readme = (REPO / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
    assert [c for c in commands if c] == ["make train", "make test"]
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^(time )?make train$", ci, re.M) and re.search(r"^make test$", ci, re.M)


def test_make_train_trains_the_first_run_and_says_where_everything_is(
    run_env, sample_root, tmp_path
):
    venv = _installed_venv(tmp_path / "venv")
    env = {
        **run_env,
        "CELEBA_GENDER_ROOT": str(tmp_path),  # outputs/ goes here, not into the clone
        "CELEBA_ROOT": str(tmp_path / "no_celeba_here"),  # the recipe uses the sample anyway
    }
    # Two epochs of 4 steps: 8 steps, past the recipe's log_every_n_steps=5 (a step curve).
    done = _make(
        "train", f"VENV={venv}", "ARGS=trainer.max_epochs=2 +trainer.limit_train_batches=4", env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout + done.stderr
    assert "pip install" not in said  # installed once: the second command starts at once
    for noise in NOISE:
        assert noise not in said, noise
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["experiment"], metrics["image_size"], metrics["epochs_trained"]) == (
        "first_run",
        48,
        2,
    )
    assert metrics["data_root"] == str(sample_root)
    best = run / "checkpoints" / "best.ckpt"
    assert best.is_file()
    # The last lines: where things are, and what to try next, with paths that exist.
    summary = done.stderr[done.stderr.index("Done: test accuracy") :]
    assert f"run folder:  {run}/" in summary
    assert f"results:     {run / 'metrics.json'}" in summary
    assert f"checkpoint:  {best}" in summary
    assert "make tensorboard" in summary
    assert f"predict.py ckpt_path={best} input=photos/" in summary
    assert "experiment=cpu_quick" in summary
    # `make tensorboard` shows this run's folder (CELEBA_GENDER_ROOT's outputs/).
    shown = _make("-n", "tensorboard", f"VENV={venv}", env=env).stdout
    assert f"--logdir {tmp_path}/outputs" in shown

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss_step", "val/acc", "val/auroc", "~test/acc"} <= scalars
    assert len(events.Scalars("val/acc")) == 2  # a curve: one point an epoch
    assert {"val/confusion_matrix", "~test/confusion_matrix"} <= set(events.Tags()["images"])
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")


def test_eval_prints_no_third_party_noise(smoke_run, run_env, tmp_path):
    done = run_script(
        "eval.py",
        f"ckpt_path={smoke_run / 'checkpoints' / 'best.ckpt'}",
        f"hydra.run.dir={tmp_path / 'eval'}",
        env=run_env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout + done.stderr
    for noise in NOISE:
        assert noise not in said, noise
    assert "GPU available" in said  # Lightning's own lines are still there
