"""Interrupted runs: SIGKILL, step checkpoints, stop signals, resumption, refusals, atomic writes.

The reference is the same command left alone. A resumed run must end with exactly its test
metrics, confusion matrix, predictions and TensorBoard curves.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import forked_python
import lightning as L
import pytest
import torch
from conftest import REPO, _unavailable, delete_big_files, file_stamps, run_script
from lightning.pytorch.callbacks import Checkpoint, EMAWeightAveraging
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from celeba_gender.config import CONFIG_DIR, compose_config
from celeba_gender.data.sampling import EpochSampler, ignore_stop_signals
from celeba_gender.stop_signals import STOP_SIGNALS
from celeba_gender.training.folder_lock import (
    RunFolderInUse,
    _claim_without_flock,
    hold_run_folder,
)
from celeba_gender.training.resume import (
    AtomicCheckpointIO,
    LastCheckpoint,
    OutOfSpace,
    StopSignals,
    TrainingInterrupted,
    _with_added_settings,
    checkpoint_position,
    config_differences,
    flatten_config,
    saved_config,
)

# Smoke size, but three epochs of six batches, augmentation and mixup drawing random numbers,
# checkpoints every 4 steps (steps 4, 8 and 16 fall inside an epoch).
RUN = (
    "experiment=smoke",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=6",
    "trainer.limit_val_batches=2",
    "trainer.deterministic=true",
    "callbacks.model_checkpoint.save_last=true",
    "callbacks.model_checkpoint.save_weights_only=false",
    "checkpoint_every_n_steps=4",
    "data.augmentations=[{name:horizontal_flip,p:0.5},{name:rotation,degrees:10}]",
    "mixup_alpha=0.2",
)
STEPS_PER_EPOCH = 6


def _train(folder: Path, *extra: str, env: dict) -> subprocess.CompletedProcess:
    return run_script("train.py", *RUN, f"hydra.run.dir={folder}", *extra, env=env)


@pytest.fixture(scope="module")
def reference(run_env, tmp_path_factory) -> Iterator[Path]:
    """The command run once, uninterrupted."""
    folder = tmp_path_factory.mktemp("reference") / "run"
    result = _train(folder, env=run_env)
    assert result.returncode == 0, result.stderr[-3000:]
    yield folder
    delete_big_files(folder)


def _results(folder: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["status"] == "ok", metrics.get("error")
    return {
        **{k: v for k, v in metrics.items() if k.startswith("test/")},
        "confusion_matrix": metrics["confusion_matrix"],
        "best_val": metrics["best_val"],
        "epochs_trained": metrics["epochs_trained"],
        "test_predictions": (folder / "test_predictions.csv").read_text(),
        "val_predictions": (folder / "val_predictions.csv").read_text(),
    }


def _curves(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar as TensorBoard shows it (events a resumed run replaced are
    purged), and the steps of every image."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(
        str(folder / "tensorboard"), size_guidance={"scalars": 0, "images": 0}
    )
    events.Reload()
    curves = {t: [(e.step, e.value) for e in events.Scalars(t)] for t in events.Tags()["scalars"]}
    curves.update({t: [e.step for e in events.Images(t)] for t in events.Tags()["images"]})
    return curves


def _step(point: tuple[int, float] | int) -> int:
    return point[0] if isinstance(point, tuple) else point  # a scalar's or an image's


def _assert_same_curves(folder: Path, reference: Path, resumed_output: str) -> None:
    """The resumed run's TensorBoard equals the reference's; only when it resumed inside an
    epoch do that epoch's means (train/loss_epoch, train/acc, logged at the epoch's last step)
    differ: they cover the batches after the resume."""
    resumed_at = re.search(r"Resuming from .* \(step (\d+)\)", resumed_output)
    step = int(resumed_at.group(1)) if resumed_at else 0  # none: it started afresh
    curves, expected = _curves(folder), _curves(reference)
    if step % STEPS_PER_EPOCH:
        epoch_end = (step // STEPS_PER_EPOCH + 1) * STEPS_PER_EPOCH - 1
        for tag in ("train/loss_epoch", "train/acc"):
            assert [p for p in curves.pop(tag) if p[0] != epoch_end] == [
                p for p in expected.pop(tag) if p[0] != epoch_end
            ]
    assert curves == expected


@pytest.mark.slow
def test_a_run_killed_at_any_moment_resumes_to_the_same_results(reference, run_env, tmp_path):
    folder = tmp_path / "run"
    process = forked_python.Popen(
        [sys.executable, str(REPO / "train.py"), *RUN, f"hydra.run.dir={folder}"],
        cwd=REPO,
        env={**{k: v for k, v in os.environ.items() if k != "CELEBA_ROOT"}, **run_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = folder / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # wherever it is now
    assert process.wait() == -signal.SIGKILL
    assert not (folder / "metrics.json").exists()

    resumed = _train(folder, "resume=true", env=run_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout
    assert _results(folder) == _results(reference)
    _assert_same_curves(folder, reference, resumed.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [4, 5])
def test_a_checkpoint_on_disk_has_every_point_logged_before_it(
    kill_at, reference, run_env, tmp_path
):
    """A hard kill lands after everything step ``kill_at``'s end does (the last checkpoint's
    save at step 4 included): whatever last.ckpt is on disk then, every point logged before its
    step is on disk too, or the resumed run (which starts at that step) would lack it."""
    folder = tmp_path / "run"
    killed = _train(folder, f"fault.kill_at_step={kill_at}", env=run_env)
    assert killed.returncode == -signal.SIGKILL
    last = folder / "checkpoints" / "last.ckpt"
    saved_at = checkpoint_position(last)[1] if last.exists() else 0
    assert saved_at == (4 if kill_at == 5 else saved_at)  # step 4's save is written by step 5

    def before_it(curves: dict) -> dict:
        steps = {tag: [p for p in points if _step(p) < saved_at] for tag, points in curves.items()}
        return {tag: points for tag, points in steps.items() if points}

    assert before_it(_curves(folder)) == before_it(_curves(reference))
    assert saved_at == 0 or before_it(_curves(reference))["train/loss_step"]  # not vacuous

    resumed = _train(folder, "resume=true", env=run_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _results(folder) == _results(reference)
    _assert_same_curves(folder, reference, resumed.stdout)


@pytest.mark.slow
def test_a_run_killed_after_a_step_checkpoint_resumes_mid_epoch_to_the_same_results(
    reference, run_env, tmp_path
):
    folder = tmp_path / "run"
    killed = _train(folder, "fault.kill_at_step=10", "fault.how=sigkill", env=run_env)
    assert killed.returncode == -signal.SIGKILL

    resumed = _train(folder, "resume=true", env=run_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(step 8)" in resumed.stdout  # the step checkpoint inside epoch 1, not its start
    assert _results(folder) == _results(reference)
    _assert_same_curves(folder, reference, resumed.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["sigterm"])  # SIGUSR1/2 take the same path, minus Lightning's
def test_a_stop_signal_saves_records_interrupted_and_resumes(stop, reference, run_env, tmp_path):
    folder = tmp_path / "run"
    stopped = _train(folder, "fault.kill_at_step=9", f"fault.how={stop}", env=run_env)
    signum = getattr(signal, stop.upper())
    assert stopped.returncode == 128 + signum, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    assert "resume=true" in stopped.stderr
    record = json.loads((folder / "metrics.json").read_text())
    assert record["status"] == "interrupted"
    assert record["signal"] == stop.upper()
    assert record["global_step"] == 9  # saved after the step the signal came in
    checkpoint = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)
    assert checkpoint["global_step"] == 9

    resumed = _train(folder, "resume=true", env=run_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _results(folder) == _results(reference)


def test_a_finished_run_is_skipped_with_its_files_untouched(reference, run_env):
    before = file_stamps(reference)
    result = _train(reference, "resume=true", env=run_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped" in result.stderr
    assert file_stamps(reference) == before
    # Its results answer its own command only: another config is refused, not skipped.
    changed = _train(reference, "resume=true", "trainer.max_epochs=5", env=run_env)
    assert changed.returncode == 2
    assert "trainer.max_epochs: 3 -> 5" in changed.stderr
    assert file_stamps(reference) == before


def test_a_folder_holding_a_run_is_not_overwritten_without_resume(reference, run_env):
    before = file_stamps(reference)
    result = _train(reference, env=run_env)
    assert result.returncode == 2
    assert "already holds a finished run" in result.stderr and "resume=true" in result.stderr
    assert "Traceback" not in result.stderr
    assert file_stamps(reference) == before


def test_a_saved_config_is_read_again_when_its_file_changes(tmp_path, monkeypatch):
    """saved_config parses each version of a resolved config once (the analysis asks for it
    several times): a rewrite, even to the same size and time, is read anew, and a caller
    that edits what it got does not change what the next caller gets. An old folder's
    config.yaml is resolved at each call (its ${oc.env:...} follow the environment)."""
    folder = tmp_path / ".hydra"
    folder.mkdir()
    assert saved_config(tmp_path) is None
    (folder / "config.yaml").write_text("seed: 1\nname: ${seed}\nhome: ${oc.env:PROBE,unset}\n")
    old = saved_config(tmp_path)
    assert (old["seed"], old["name"], old["home"]) == (1, 1, "unset")
    monkeypatch.setenv("PROBE", "set")
    assert saved_config(tmp_path)["home"] == "set"
    resolved = folder / "resolved_config.yaml"
    day_ago = time.time_ns() - 86_400 * 10**9  # an old run's file: its parse is kept

    def write(text: str, path: Path = resolved, stamp: int = day_ago) -> None:
        path.write_text(text)
        os.utime(path, ns=(stamp, stamp))

    write("seed: 1\ndata: {split: identity}\n")
    first = saved_config(tmp_path)
    assert first["seed"] == 1 and first["data"]["split"] == "identity"
    first["data"]["split"] = "edited by a caller"
    assert saved_config(tmp_path)["data"]["split"] == "identity"
    write("seed: 2\ndata: {split: identity}\n", folder / "new.yaml")  # same size and time,
    (folder / "new.yaml").replace(resolved)  # replaced as atomic_write does
    assert saved_config(tmp_path)["seed"] == 2
    with open(resolved, "r+") as file:  # rewritten in place: same size, a new time
        file.write("seed: 3")
    os.utime(resolved, ns=(day_ago + 1, day_ago + 1))
    assert saved_config(tmp_path)["seed"] == 3
    with open(resolved, "r+") as file:  # just now: same size, and the time may not tell
        file.write("seed: 4")
    assert saved_config(tmp_path)["seed"] == 4


def test_resume_with_a_changed_config_is_refused_and_names_the_keys(run_env, tmp_path):
    def _train(folder: Path, *extra: str, env: dict) -> subprocess.CompletedProcess:
        # One epoch: the kill at step 5 still follows the step-4 checkpoint inside it.
        return run_script("train.py", *RUN, "trainer.max_epochs=1", f"hydra.run.dir={folder}",
                          *extra, env=env)  # fmt: skip

    folder = tmp_path / "run"
    killed = _train(folder, "fault.kill_at_step=5", env=run_env)
    assert killed.returncode == -signal.SIGKILL
    before = file_stamps(folder)
    changed = _train(folder, "resume=true", "optimizer.lr=0.5", "seed=7", env=run_env)
    assert changed.returncode == 2
    assert "optimizer.lr: 0.0001 -> 0.5" in changed.stderr
    assert "seed: 42 -> 7" in changed.stderr
    assert "Traceback" not in changed.stderr
    assert file_stamps(folder) == before
    # A damaged last.ckpt (a copy of the folder, truncated): one line naming it and the way out.
    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    last = damaged / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    before_damaged = file_stamps(damaged)
    refused = _train(damaged, "resume=true", env=run_env)
    assert refused.returncode == 2
    assert f"{last} is damaged" in refused.stderr and f"rm '{last}'" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert file_stamps(damaged) == before_damaged  # no traceback written into metrics.json
    last.write_bytes(b"")  # empty (a full disk): said so, not torch's advice on saving
    empty = _train(damaged, "resume=true", env=run_env)
    assert empty.returncode == 2
    assert f"{last} is damaged and cannot be resumed from (an empty file)" in empty.stderr
    assert "mmap" not in empty.stderr and "Traceback" not in empty.stderr
    # A moved folder resumes: keys made from paths.* (checkpoint dirpath, TensorBoard's
    # save_dir, trainer.default_root_dir) are where things are, not what is computed; and what
    # may change on resumption does not refuse (here: how often to checkpoint).
    moved = tmp_path / "moved"
    shutil.move(folder, moved)
    resumed = _train(moved, "resume=true", "checkpoint_every_n_steps=100", env=run_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout


def test_resume_without_a_checkpoint_starts_fresh_and_says_so(run_env, tmp_path):
    folder = tmp_path / "run"
    result = _train(folder, "resume=true", "trainer.max_epochs=1", env=run_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no last.ckpt" in result.stdout and "starting fresh" in result.stdout
    assert json.loads((folder / "metrics.json").read_text())["status"] == "ok"


_WRITER = """
import sys, time, torch
from celeba_gender.training.resume import AtomicCheckpointIO

class SlowToWrite:  # pickled after the file is opened, before anything is written
    def __reduce__(self):
        print("writing", flush=True)
        time.sleep(60)
        return (int, (0,))

AtomicCheckpointIO().save_checkpoint({"n": 1, "slow": SlowToWrite()}, sys.argv[1])
"""


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"n": 0, "weights": torch.zeros(3)}, path)
    writer = forked_python.Popen(
        [sys.executable, "-c", _WRITER, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout.readline().strip() == "writing"
    writer.kill()  # SIGKILL in the middle of the write
    writer.wait()
    assert torch.load(path, weights_only=True)["n"] == 0
    # The next write clears what the killed one left, and results are readable by others.
    io.save_checkpoint({"n": 2}, path)
    assert torch.load(path, weights_only=True)["n"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_config_differences_list_changed_keys_except_ignored_ones():
    saved = {
        "seed": 1,
        "data": {"root": "/a", "image_size": 64},
        "paths": {"x": 1},
        "resume": False,
    }
    current = {"seed": 1, "data": {"root": "/b", "image_size": 64}, "paths": {"x": 2}, "new": 3}
    assert config_differences(saved, current, ["paths.*", "resume"]) == [
        "data.root: '/a' -> '/b'",
        "new: '<absent>' -> 3",
    ]


def test_epoch_order_depends_on_seed_and_epoch_only_and_shards_cover_it():
    first, again = EpochSampler(50, seed=3), EpochSampler(50, seed=3)
    first.set_epoch(2)
    again.set_epoch(2)
    assert list(first) == list(again)
    again.set_epoch(3)
    assert list(first) != list(again)
    # Two ranks: disjoint shards of one padded order, together every item.
    ranks = [EpochSampler(51, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    shards = [list(s) for s in ranks]
    assert len(shards[0]) == len(shards[1]) == 26
    assert set(shards[0]) | set(shards[1]) == set(range(51))
    # Mid-epoch: the rest of the same order, once; the next pass is whole again.
    sampler = EpochSampler(50, seed=3)
    sampler.set_epoch(4)
    whole = list(sampler)
    sampler.skip_to(4, 20)
    assert list(sampler) == whole[20:]
    assert list(sampler) == whole


class _WorkerSignals(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, item: int) -> list[bool]:
        return [signal.getsignal(s) == signal.SIG_IGN for s in STOP_SIGNALS]


def test_loader_workers_ignore_stop_signals_so_the_main_process_can_save():
    """Every signal stop_signals may name (SIGHUP and SIGQUIT too): a worker killed by the one
    configured would take the batch the main process is saving after."""
    assert {signal.Signals(s).name for s in STOP_SIGNALS} >= {"SIGHUP", "SIGQUIT", "SIGTERM"}
    loader = torch.utils.data.DataLoader(
        _WorkerSignals(), num_workers=1, worker_init_fn=ignore_stop_signals, batch_size=None
    )
    assert all(all(ignored) for ignored in loader)


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A real 1 MiB file system (tmpfs; mounting needs root, as CI has)."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        _unavailable(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_while_checkpointing_is_named_and_the_previous_checkpoint_kept(small_disk):
    path = small_disk / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"weights": torch.arange(1000.0)}, path)  # fits
    before = path.read_bytes()
    with pytest.raises(OutOfSpace) as refused:
        io.save_checkpoint({"weights": torch.zeros(2**19)}, path)  # 2 MiB does not
    message = str(refused.value)
    assert f"No space left in {small_disk} to write last.ckpt" in message
    assert "needs about 2.10 MB" in message and "resume=true" in message, message
    assert "previous last.ckpt is intact" in message
    assert path.read_bytes() == before
    assert [p.name for p in small_disk.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_two_processes_never_share_a_run_folder(run_env, tmp_path):
    folder = tmp_path / "run"
    long_run = ("trainer.max_epochs=40",)  # long enough to still run while the second starts
    killed = _train(folder, *long_run, "fault.kill_at_step=5", env=run_env)
    assert killed.returncode == -signal.SIGKILL
    lock = folder / ".run.lock"
    assert lock.read_text() != ""  # the dead process's record stays: its flock went with it
    first = forked_python.Popen(
        [sys.executable, str(REPO / "train.py"), *RUN, *long_run, f"hydra.run.dir={folder}"]
        + ["resume=true"],
        cwd=REPO,
        env={**{k: v for k, v in os.environ.items() if k != "CELEBA_ROOT"}, **run_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while f'"pid": {first.pid}' not in lock.read_text() and time.monotonic() < deadline:
            assert first.poll() is None, "the first process ended before taking the folder"
            time.sleep(0.1)
        second = _train(folder, *long_run, "resume=true", env=run_env)
        assert first.poll() is None, "the first process must still hold the folder"
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"{folder} is in use by pid {first.pid} on {socket.gethostname()}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)  # saves and records "interrupted"
        first.wait(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM
    assert json.loads((folder / "metrics.json").read_text())["status"] == "interrupted"
    assert lock.read_text() == ""  # released: the next command takes it


def test_a_refused_process_writes_nothing_into_the_holders_log(run_env, tmp_path):
    """While the folder is held, resume=true into it is refused without a line in the holder's
    train.log; once free, the run starts and says "starting fresh" once, not once per look."""
    folder = tmp_path / "run"
    starting_fresh = "resume=true: no last.ckpt in"
    with hold_run_folder(folder):  # this process holds it, as a running job would
        refused = _train(folder, "resume=true", "trainer.max_epochs=1", env=run_env)
        assert refused.returncode == 2 and "is in use by pid" in refused.stderr, refused.stderr
    log = folder / "train.log"
    assert not log.exists() or starting_fresh not in log.read_text()
    started = _train(folder, "resume=true", "trainer.max_epochs=1", env=run_env)
    assert started.returncode == 0, started.stderr[-3000:]
    assert log.read_text().count(starting_fresh) == 1


def test_without_file_locks_the_recorded_holder_decides(tmp_path):
    """Where flock is not supported, a dead holder on this host is taken over; a live one, or
    one on another host (not checkable from here), refuses."""
    dead = forked_python.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    ).stdout.strip()
    path = tmp_path / ".run.lock"
    for holder, refused in (
        ({"pid": int(dead), "host": socket.gethostname()}, None),
        ({"pid": os.getppid(), "host": socket.gethostname()}, f"pid {os.getppid()} on "),
        ({"pid": 1, "host": "another-node"}, f"If that job is gone, delete {path}"),
        ({"pid": os.getpid(), "host": "another-node"}, "on another-node"),  # same pid elsewhere
    ):
        path.write_text(json.dumps(holder))
        with path.open("a+") as handle:
            if refused is None:
                _claim_without_flock(handle, path)
            else:
                with pytest.raises(RunFolderInUse, match=re.escape(refused)):
                    _claim_without_flock(handle, path)


@pytest.mark.parametrize("save_last", [True, False])
def test_last_ckpt_follows_every_epoch_whether_or_not_the_best_improved(
    save_last, run_env, tmp_path
):
    """One writer of last.ckpt (LastCheckpoint): with save_last it is written at every epoch's
    end. ModelCheckpoint, its second writer before, wrote it only in an epoch that saved a new
    best.ckpt: with save_top_k=0 (or a validation that did not improve) never, and a resume
    redid the epochs since."""
    folder = tmp_path / "run"
    result = run_script(
        "train.py",
        "experiment=smoke",
        "trainer.max_epochs=2",  # 2 steps each
        f"callbacks.model_checkpoint.save_last={str(save_last).lower()}",
        "callbacks.model_checkpoint.save_weights_only=false",
        "+callbacks.model_checkpoint.save_top_k=0",
        f"hydra.run.dir={folder}",
        env=run_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    last = folder / "checkpoints" / "last.ckpt"
    if save_last:
        assert checkpoint_position(last) == (1, 4)  # the second epoch's end
    else:
        assert not last.exists()


def test_a_second_model_checkpoint_with_save_last_does_not_write_last_ckpt_itself(
    run_env, tmp_path
):
    """Every ModelCheckpoint's save_last goes to LastCheckpoint, not only the configured one's:
    a second one (added for another metric) would otherwise write a last.ckpt of its own, only
    in epochs it saved in."""
    folder, extra = tmp_path / "run", tmp_path / "extra"
    result = run_script(
        "train.py",
        "experiment=smoke",
        "trainer.max_epochs=2",  # 2 steps each
        "callbacks.model_checkpoint.save_last=false",
        "callbacks.model_checkpoint.save_weights_only=false",
        "+callbacks.by_loss={_target_:lightning.pytorch.callbacks.ModelCheckpoint,"
        f"dirpath:'{extra}',monitor:val/loss,mode:min,save_last:true}}",
        f"hydra.run.dir={folder}",
        env=run_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert checkpoint_position(folder / "checkpoints" / "last.ckpt") == (1, 4)
    assert not (extra / "last.ckpt").exists() and any(extra.glob("epoch=*.ckpt"))


# --------------------------------------------------------------- LastCheckpoint, in process
class _Tiny(L.LightningModule):
    """Six batches an epoch; ``fail`` raises in the named hook at that global step."""

    def __init__(self, fail: tuple[str, int] | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.fail = fail

    def _maybe_fail(self, where: str) -> None:
        if self.fail == (where, self.global_step):
            raise RuntimeError(f"{where} failed at step {self.global_step}")

    def training_step(self, batch: list, index: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch: list, index: int) -> None:
        self._maybe_fail("validation")

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self._maybe_fail("batch_end")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.randn(12, 2)), batch_size=2)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.randn(2, 2)), batch_size=2)


class _RawWeights(L.Callback):
    """The model's own weights after each training step."""

    def __init__(self) -> None:
        self.at_step: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        state = pl_module.state_dict()
        self.at_step[trainer.global_step] = {k: v.clone() for k, v in state.items()}


def _fit(module: L.LightningModule, callbacks: list, **trainer_args) -> None:
    trainer = L.Trainer(
        callbacks=callbacks, logger=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", **trainer_args,
    )  # fmt: skip
    trainer.fit(module)


def test_a_validation_between_a_save_and_its_write_cannot_change_what_is_written(tmp_path):
    """Validation every 4 batches counted across epochs (6 an epoch): the one after step 8
    runs between the step-8 save's taking and the next batch. It swaps the EMA weights into
    the model; a crash in it writes the save, which must hold the weights of step 8 as
    they were, the raw ones as the model's own."""
    last, raw = LastCheckpoint(tmp_path / "last.ckpt", every_n_steps=4), _RawWeights()
    with pytest.raises(RuntimeError, match="validation failed at step 8"):
        _fit(
            _Tiny(fail=("validation", 8)),
            [last.writer, raw, EMAWeightAveraging(decay=0.5), last],
            max_epochs=3, check_val_every_n_epoch=None, val_check_interval=4,
            limit_val_batches=1, num_sanity_val_steps=0,
        )  # fmt: skip
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 8
    own = checkpoint["current_model_state"]  # the EMA callback keeps the raw weights here
    assert own.keys() == raw.at_step[8].keys()
    assert all(torch.equal(own[k], raw.at_step[8][k]) for k in own)
    assert not all(torch.equal(checkpoint["state_dict"][k], own[k]) for k in own)  # averaged


def test_a_second_ctrl_c_reports_the_checkpoint_that_is_on_disk(
    tmp_path, ctrl_c_reaches_this_process
):
    """Two Ctrl-Cs at step 8's end, when its save is taken but not yet written: the stop
    names the checkpoint written last (step 4), and that is the one left for resume=true."""

    class CtrlCTwice(Checkpoint):  # a Checkpoint: Lightning runs it after LastCheckpoint
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == 8:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)

    path = tmp_path / "last.ckpt"
    with StopSignals(["SIGINT"]) as stops:
        last = LastCheckpoint(path, every_n_steps=4, stops=stops)
        with pytest.raises(TrainingInterrupted) as stopped:
            _fit(_Tiny(), [last.writer, last, CtrlCTwice()], max_epochs=3, limit_val_batches=0)
    assert stopped.value.checkpoint == path
    assert stopped.value.step == checkpoint_position(path)[1] == 4


def test_a_stop_signal_while_a_crash_writes_its_save_does_not_hide_the_crash(tmp_path):
    """A crash right after step 8's save was taken writes it; a SIGTERM arriving during that write
    is recorded, not raised in place of the crash (which Lightning then tears down as one)."""

    class SigtermWhileWriting(AtomicCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
            if checkpoint["global_step"] == 8:
                os.kill(os.getpid(), signal.SIGTERM)
            super().save_checkpoint(checkpoint, path, storage_options)

    path = tmp_path / "last.ckpt"
    with StopSignals(["SIGTERM"]) as stops:
        last = LastCheckpoint(path, every_n_steps=4, stops=stops)
        module = _Tiny(fail=("batch_end", 8))
        trainer = L.Trainer(
            callbacks=[last.writer, last], logger=False, enable_progress_bar=False,
            enable_model_summary=False, accelerator="cpu", max_epochs=3, limit_val_batches=0,
            plugins=[SigtermWhileWriting()],
        )  # fmt: skip
        with pytest.raises(RuntimeError, match="batch_end failed at step 8"):
            trainer.fit(module)
    assert stops.requested == signal.SIGTERM
    assert checkpoint_position(path)[1] == 8


def test_a_stop_after_the_last_epochs_end_saves_the_weights_before_the_ema_copies_its_own(
    tmp_path,
):
    """A SIGTERM after the last epoch's end (no epoch-end saves) is saved when training ends,
    before the EMA callback copies its average over the model: the raw weights are kept."""

    class SigtermAtTheEnd(Checkpoint):  # a Checkpoint: Lightning runs it after LastCheckpoint
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if trainer.current_epoch == trainer.max_epochs - 1:
                os.kill(os.getpid(), signal.SIGTERM)

    path, raw = tmp_path / "last.ckpt", _RawWeights()
    with StopSignals(["SIGTERM"]) as stops:
        last = LastCheckpoint(path, stops=stops)
        with pytest.raises(TrainingInterrupted):
            _fit(
                _Tiny(),
                [last.writer, raw, EMAWeightAveraging(decay=0.5), last, SigtermAtTheEnd()],
                max_epochs=2, limit_val_batches=0,
            )  # fmt: skip
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["global_step"] == 12
    own = checkpoint["current_model_state"]
    assert all(torch.equal(own[k], raw.at_step[12][k]) for k in raw.at_step[12])


def test_every_setting_added_since_the_baseline_lets_earlier_runs_resume():
    """A key added to conf/ after tests/config_keys_baseline.txt (the dotted keys of the
    default config and of every experiment at 010121b, 2026-12-06) must be in ADDED_SETTINGS
    at the value earlier runs had in effect, or be one resume ignores: otherwise every run
    saved before it is refused by resume=true and counted apart by the analysis."""
    baseline = set((Path(__file__).parent / "config_keys_baseline.txt").read_text().split())
    experiments = sorted((CONFIG_DIR / "experiment").glob("*.yaml"))
    for overrides in [[], *([f"experiment={path.stem}"] for path in experiments)]:
        current = OmegaConf.to_container(compose_config("config", overrides), resolve=False)
        ignore = list(current["resume_ignore"])
        # The config as a run saved it before the new keys: the baseline's keys only.
        saved: dict = {}
        for dotted, value in flatten_config(current).items():
            if dotted in baseline:
                *parents, key = dotted.split(".")
                node = saved
                for parent in parents:
                    node = node.setdefault(parent, {})
                node[key] = value
        assert config_differences(_with_added_settings(saved), current, ignore) == [], overrides
