"""Ctrl-C and SIGTERM from outside, at any point of a real run on the subset: metrics.json
says "interrupted", with the epoch reached and the checkpoint resume=true continues from."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import forked_python
import pytest
import torch
from conftest import REPO, as_at_a_terminal, run_script

# Smoke size on the subset, 12 steps an epoch, last.ckpt kept.
BASE = (
    "experiment=smoke",
    "trainer.limit_train_batches=12",
    "data.batch_size=16",
    "callbacks.model_checkpoint.save_last=true",
    "callbacks.model_checkpoint.save_weights_only=false",
)
RUN = (*BASE, "trainer.max_epochs=2", "checkpoint_every_n_steps=4")  # a step checkpoint every 4
STEPS = 24
# One epoch, then a long test part (one image a batch), so that a signal finds it testing.
SLOW_TEST = (
    *BASE,
    "trainer.max_epochs=1",
    "data.eval_batch_size=1",
    "trainer.limit_test_batches=100",
)


@pytest.fixture
def env(run_env, subset_root) -> dict:
    return {**run_env, "CELEBA_ROOT": str(subset_root)}


def _start(folder: Path, env: dict, run: tuple[str, ...] = RUN) -> subprocess.Popen:
    return forked_python.Popen(
        [sys.executable, str(REPO / "train.py"), *run, f"hydra.run.dir={folder}"],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_at_a_terminal,
    )


def _signal_when(
    process: subprocess.Popen, path: Path, signum: int, delay: float = 0.0
) -> tuple[int, str]:
    """Send ``signum`` ``delay`` seconds after ``path`` exists; the exit code and stderr."""
    deadline = time.monotonic() + 240
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    assert process.poll() is None, "the run ended before the signal"
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=240)
    return process.returncode, stderr


def _record(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def _position(checkpoint: str) -> tuple[int, int]:
    saved = torch.load(checkpoint, weights_only=True, mmap=True, map_location="cpu")
    return saved["epoch"], saved["global_step"]


def _resume(folder: Path, env: dict, run: tuple[str, ...] = RUN) -> subprocess.CompletedProcess:
    return run_script("train.py", *run, f"hydra.run.dir={folder}", "resume=true", env=env)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_training_saves_records_and_resumes(stop, env, tmp_path):
    folder = tmp_path / "run"
    process = _start(folder, env)
    # The first step checkpoint is there: training is under way.
    code, stderr = _signal_when(process, folder / "checkpoints" / "last.ckpt", stop)
    assert code == 128 + stop, stderr[-3000:]
    assert "Traceback" not in stderr and "resume=true" in stderr
    record = _record(folder)
    assert record["status"] == "interrupted" and record["signal"] == stop.name
    assert record["checkpoint"] == str(folder / "checkpoints" / "last.ckpt")
    assert 4 <= record["global_step"] < STEPS  # during training, not after it
    assert _position(record["checkpoint"]) == (record["epoch"], record["global_step"])
    if stop == signal.SIGTERM:
        return  # resumption: once is enough (the SIGINT case)
    resumed = _resume(folder, env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"(step {record['global_step']})" in resumed.stdout
    finished = _record(folder)
    assert finished["status"] == "ok" and finished["epochs_trained"] == 2


def test_a_signal_before_training_records_the_run_as_interrupted(env, tmp_path):
    folder = tmp_path / "run"
    process = _start(folder, env)
    # The run's config is saved: the job is loading the data, before any checkpoint.
    code, stderr = _signal_when(process, folder / ".hydra" / "resolved_config.yaml", signal.SIGINT)
    assert code == 128 + signal.SIGINT, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    record = _record(folder)
    assert record["status"] == "interrupted" and record["signal"] == "SIGINT"
    assert (record["checkpoint"], record["epoch"], record["global_step"]) == (None, 0, 0)


def test_a_signal_while_testing_records_interrupted_and_resume_only_tests(env, tmp_path):
    folder = tmp_path / "run"
    process = _start(folder, env, SLOW_TEST)
    # last.ckpt comes after best.ckpt at the end of the only epoch: testing follows.
    last = folder / "checkpoints" / "last.ckpt"
    code, stderr = _signal_when(process, last, signal.SIGTERM, delay=0.5)
    assert code == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr
    record = _record(folder)
    assert record["status"] == "interrupted" and record["signal"] == "SIGTERM"
    assert (record["checkpoint"], record["global_step"]) == (str(last), 12)
    # The epoch is the checkpoint's (0, the epoch it ended), not the trainer's count after it.
    assert _position(record["checkpoint"]) == (record["epoch"], record["global_step"])
    resumed = _resume(folder, env, SLOW_TEST)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(step 12)" in resumed.stdout  # nothing left to train: it tests
    finished = _record(folder)
    assert finished["status"] == "ok" and finished["epochs_trained"] == 1


def test_stop_signals_stop_at_once_outside_training_and_after_saving_inside_it(tmp_path):
    from celeba_gender.training.resume import StopSignals, TrainingInterrupted

    before = signal.getsignal(signal.SIGUSR1)
    # As under a terminal (pytest may run with SIGINT ignored, which StopSignals keeps).
    interrupt = signal.signal(signal.SIGINT, signal.default_int_handler)
    with StopSignals(["SIGUSR1", "SIGINT"]) as stops:
        stops.checkpoint, stops.epoch, stops.step = tmp_path / "last.ckpt", 2, 30
        with pytest.raises(TrainingInterrupted) as raised:  # outside training: at once
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(1)
        assert (raised.value.signal_name, raised.value.epoch, raised.value.step) == (
            "SIGUSR1",
            2,
            30,
        )
        assert raised.value.checkpoint == tmp_path / "last.ckpt"
        # Training, as a new job: a signal is recorded, LastCheckpoint saves (the first stop held
        # the handler: a signal while a job ends is only recorded).
        stops.requested, stops.held, stops.deferred = None, False, True
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert stops.requested == signal.SIGINT
        with pytest.raises(TrainingInterrupted):  # a second Ctrl-C: at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGUSR1) == before
    signal.signal(signal.SIGINT, interrupt)


def test_a_second_signal_while_a_stopped_job_ends_is_only_recorded():
    """Outside training the first signal stops the job at once; a second (SIGTERM after
    SIGUSR2, a double Ctrl-C) while the stop unwinds through Lightning's teardown and the
    crash-path checkpoint write is recorded, not raised inside them."""
    from celeba_gender.training.resume import LastCheckpoint, StopSignals, TrainingInterrupted

    with StopSignals(["SIGUSR1", "SIGUSR2"]) as stops:
        with pytest.raises(TrainingInterrupted):
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGUSR2)  # raised here before: nothing was held
        time.sleep(0.05)
        assert stops.requested == signal.SIGUSR2
    # During training the first is deferred; LastCheckpoint saves, then stops the job itself.
    with StopSignals(["SIGUSR1", "SIGUSR2"]) as stops:
        stops.deferred = True
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
        checkpoint = LastCheckpoint(Path("last.ckpt"), None, stops)
        trainer = SimpleNamespace(current_epoch=0, global_step=3)
        checkpoint.write_taken = lambda trainer: None  # nothing was taken to write
        with pytest.raises(TrainingInterrupted):
            checkpoint._interrupt(trainer)
        os.kill(os.getpid(), signal.SIGUSR2)  # a second, in Lightning's teardown: recorded
        time.sleep(0.05)
        assert stops.requested == signal.SIGUSR2


def test_predict_training_and_the_demo_share_one_stop_signal_handler():
    """One handler class (stop_signals.StopSignalHandler) for training, predict and the demo,
    on the one list of signals: it raises its block's exception once, then records; a held
    block raises where it can stop; the handlers before it come back."""
    import ast

    from celeba_gender.stop_signals import STOP_SIGNALS, StopSignalHandler
    from celeba_gender.training.resume import StopSignals

    assert issubclass(StopSignals, StopSignalHandler)
    package = REPO / "celeba_gender"
    handlers = {  # every module that installs a signal handler itself
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "signal"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "signal"
    }
    # stop_signals: the handler (and the workers' SIG_IGN); quiet_interrupt: Ctrl-C while a
    # command imports, before any of this exists; ddp: the launcher's child ranks.
    assert handlers <= {"stop_signals.py", "quiet_interrupt.py", "training/ddp.py"}, handlers
    before = signal.getsignal(signal.SIGUSR1)
    ignored = {s for s in STOP_SIGNALS if signal.getsignal(s) == signal.SIG_IGN}  # stay so
    with StopSignalHandler(raises=lambda signum: SystemExit(128 + signum)) as stops:
        for signum in STOP_SIGNALS:
            assert signal.getsignal(signum) == (
                signal.SIG_IGN if signum in ignored else stops.handle
            )
        with pytest.raises(SystemExit) as raised:
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(1)
        assert raised.value.code == 128 + signal.SIGUSR1
        os.kill(os.getpid(), signal.SIGUSR2)  # the block is ending: recorded
        time.sleep(0.05)
        assert stops.requested == signal.SIGUSR2
        with pytest.raises(SystemExit):
            stops.raise_if_requested()
    assert signal.getsignal(signal.SIGUSR1) == before


def test_a_second_signal_while_the_stop_is_recorded_does_not_lose_the_record(tmp_path, monkeypatch):
    """A double Ctrl-C (or SIGTERM after SIGUSR2) whose second signal comes as metrics.json
    is written: the record is still written whole, and the job stops."""
    from hydra import compose, initialize_config_dir

    import celeba_gender.config  # noqa: F401  (resolvers)
    from celeba_gender.training import run
    from celeba_gender.training.resume import TrainingInterrupted

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=smoke", f"paths.output_dir={tmp_path}"])

    def job(cfg, start, stops, started):  # the first signal, outside training: stops at once
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)

    real_write = run.write_json

    def write_json(path, data):  # the second comes while the record is written
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        return real_write(path, data)

    monkeypatch.setattr(run, "_train", job)
    monkeypatch.setattr(run, "write_json", write_json)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted):
        run.train(cfg)
    assert signal.getsignal(signal.SIGTERM) == before
    record = _record(tmp_path)
    assert record["status"] == "interrupted" and record["signal"] == "SIGTERM"


def test_a_signal_ignored_before_the_job_stays_ignored():
    """nohup (SIGHUP) or a background job of a script (SIGINT): not taken over, and as before
    after the job."""
    from celeba_gender.training.resume import StopSignals

    before = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        with StopSignals(["SIGUSR2", "SIGUSR1"]) as stops:
            assert signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGUSR1) == stops.handle
            os.kill(os.getpid(), signal.SIGUSR2)  # ignored: nothing happens
            time.sleep(0.05)
            assert stops.requested is None
        assert signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGUSR2, before)


LOST_CTRL_C = """
import time, weakref
from celeba_gender.startup import start_command

start_command()

class Module: pass

def released(reference):  # as importlib's module locks: a weakref callback
    raise KeyboardInterrupt  # the Ctrl-C arrived while it ran
held = Module()
reference = weakref.ref(held, released)
del held
time.sleep(0.5)
print("went on as if no Ctrl-C came")
"""


def test_a_ctrl_c_python_cannot_raise_still_ends_the_command():
    """A Ctrl-C that lands in a weakref callback (the import machinery's, while torch imports)
    or a ``__del__`` is one Python prints as ignored and forgets: the command ends anyway,
    in one line, with Ctrl-C's status (a fresh train.py interrupted at 1.5 s once ran on)."""
    result = forked_python.run(
        [sys.executable, "-c", LOST_CTRL_C], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 130, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr == "Stopped (Ctrl-C).\n"


SWALLOWED_CTRL_C = """
import os, signal, time
from celeba_gender.quiet_interrupt import quiet_imports

with quiet_imports(__name__):
    try:  # as module code that catches everything while it imports (numpy's was left half-done)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)
    except BaseException:
        pass
    print("went on, half-imported")
"""

CTRL_C_AFTER_START = """
import os, signal, time
from celeba_gender.quiet_interrupt import quiet_imports
from celeba_gender.startup import start_command

with quiet_imports(__name__):
    import celeba_gender.train  # a command's module: its own quiet_imports inside this one
start_command()
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.5)
except KeyboardInterrupt:
    print("KeyboardInterrupt, for the run's own handlers")
"""


def test_a_ctrl_c_while_a_command_imports_ends_it_at_once():
    """Until the command starts (start_command), a Ctrl-C ends it on the spot: raised in the
    middle of an import, code that catches it (or a module left half-imported) would fail
    later with an unrelated traceback (a fresh train.py interrupted 0.9 s in: numpy's
    __getattr__ recursed without end). Once started, it is a KeyboardInterrupt again."""
    # As at a terminal: a shell running the tests in the background (or an earlier test's
    # Lightning) leaves Ctrl-C ignored, and a child inherits that.
    ended = forked_python.run(
        [sys.executable, "-c", SWALLOWED_CTRL_C], capture_output=True, text=True, cwd=REPO,
        timeout=60, preexec_fn=as_at_a_terminal,
    )  # fmt: skip
    assert (ended.returncode, ended.stdout, ended.stderr) == (130, "", "Stopped (Ctrl-C).\n")
    started = forked_python.run(
        [sys.executable, "-c", CTRL_C_AFTER_START], capture_output=True, text=True, cwd=REPO,
        timeout=60, preexec_fn=as_at_a_terminal,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert started.stdout == "KeyboardInterrupt, for the run's own handlers\n"


# A Ctrl-C the moment celeba_gender.demo, imported by a library user's script (or a notebook),
# imports one of its own modules.
LIBRARY_IMPORT = """
import os, signal, sys

class CtrlCWhenImported:
    def find_spec(self, name, path=None, target=None):
        if name == "celeba_gender.demo_files":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlCWhenImported())
try:
    import celeba_gender.demo
except KeyboardInterrupt:
    print("KeyboardInterrupt: the importer's to handle")
"""


def test_a_library_user_importing_a_command_keeps_pythons_ctrl_c():
    """Only a command's own process ends at once on a Ctrl-C while it imports: a script or a
    notebook that imports a command's module gets its KeyboardInterrupt (a Jupyter kernel
    must not die of an interrupted cell), its handlers and its exit as before."""
    result = forked_python.run(
        [sys.executable, "-c", LIBRARY_IMPORT], capture_output=True, text=True, cwd=REPO,
        timeout=120, preexec_fn=as_at_a_terminal,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "KeyboardInterrupt: the importer's to handle\n"
    assert "Stopped (Ctrl-C)." not in result.stderr


def test_a_command_is_its_program_or_one_of_the_console_scripts(monkeypatch):
    """python train.py / python -m celeba_gender.train run the module as __main__; pip's
    console scripts (pyproject's [project.scripts]) import it from a program of their name."""
    from celeba_gender.quiet_interrupt import CONSOLE_SCRIPT_PREFIX, runs_a_command

    section = (REPO / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n[")[0]
    scripts = dict(re.findall(r'^([\w-]+)\s*=\s*"([^"]+)"', section, re.M))
    assert scripts and all(name.startswith(CONSOLE_SCRIPT_PREFIX) for name in scripts)
    for name, entry in scripts.items():
        monkeypatch.setattr(sys, "argv", [f"/env/bin/{name}", "model=vgg11"])
        assert runs_a_command(entry.split(":")[0])
    monkeypatch.setattr(sys, "argv", ["/home/me/study.py"])
    assert runs_a_command("__main__") and not runs_a_command("celeba_gender.train")
    monkeypatch.setattr(sys, "argv", ["/env/lib/python3/site-packages/ipykernel_launcher.py"])
    assert not runs_a_command("celeba_gender.demo")


def test_the_analysis_package_leaves_its_imports_to_the_command():
    """`python -m celeba_gender.analysis` imports the package before __main__.py, whose
    imports run where a Ctrl-C ends the command at once: the package itself loads nothing
    slow (numpy, torch, ... would be imported where a Ctrl-C can leave them half-done). A
    fresh interpreter (a forked one has imported them all)."""
    probe = (
        "import sys, celeba_gender.analysis\n"
        "print([m for m in ('numpy', 'pandas', 'torch', 'matplotlib') if m in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert (result.returncode, result.stdout) == (0, "[]\n"), result.stderr[-3000:]


@pytest.mark.parametrize("delay", [0.3, 1.5, 4.0])
def test_ctrl_c_at_any_moment_of_startup_is_one_line_not_a_traceback(delay, run_env, tmp_path):
    """While Python imports torch, Hydra composes, the data is read: a Ctrl-C (SIGINT) ends
    the command with one line and the status of a process stopped by SIGINT. A fresh
    interpreter (subprocess itself): a forked one has done its imports already."""
    process = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), "experiment=smoke"]
        + [f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO,
        env={**{k: v for k, v in os.environ.items() if k != "CELEBA_ROOT"}, **run_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As at a terminal: a shell starting the tests in the background ignores SIGINT, and
        # its children inherit that (Python then never sees a Ctrl-C).
        preexec_fn=as_at_a_terminal,
    )
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert "Traceback" not in stderr, stderr[-3000:]
    assert process.returncode in (130, -signal.SIGINT, 128 + signal.SIGINT), stderr[-3000:]
