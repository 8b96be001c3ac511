"""Long studies: a sweep continued after a kill, its status, one process per job, SLURM, and
an analysis over several sweep folders."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import forked_python
import pytest
from conftest import REPO, delete_big_files, file_stamps, run_script
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

from celeba_gender.analysis.collect import collect_runs
from celeba_gender.analysis.status import sweep_status
from celeba_gender.config import CONFIG_DIR

# Four jobs (two treatments x two seeds), one short epoch each (the kill lands within 50 ms of
# the first job's end: how long the jobs train changes nothing), resumable checkpoints.
SWEEP = (
    "-m",
    "experiment=smoke",
    "treatment=scratch_bce,scratch_ce",
    "seed=1,2",
    "trainer.max_epochs=1",
    "callbacks.model_checkpoint.save_last=true",
    "callbacks.model_checkpoint.save_weights_only=false",
)
JOBS = [
    "0_resnet18_scratch_bce_seed1",
    "1_resnet18_scratch_bce_seed2",
    "2_resnet18_scratch_ce_seed1",
    "3_resnet18_scratch_ce_seed2",
]


def _analysis(*arguments: str) -> subprocess.CompletedProcess:
    """``python -m celeba_gender.analysis ...`` as a user runs it."""
    return forked_python.run(
        [sys.executable, "-m", "celeba_gender.analysis", *arguments],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )


def _status(sweep: Path) -> dict[str, str]:
    return dict(zip(*sweep_status(sweep)[["job", "state"]].to_dict("list").values(), strict=True))


@pytest.fixture(scope="module")
def continued_sweep(run_env, tmp_path_factory) -> Iterator[dict]:
    """A 4-job sweep killed once its first job finished, then continued with resume=true."""
    sweep = tmp_path_factory.mktemp("sweeps") / "study"
    command = [sys.executable, str(REPO / "train.py"), *SWEEP, f"hydra.sweep.dir={sweep}"]
    env = {**{k: v for k, v in os.environ.items() if k != "CELEBA_ROOT"}, **run_env}
    process = forked_python.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first = sweep / JOBS[0] / "metrics.json"
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:
        if first.is_file() and json.loads(first.read_text()).get("status") == "ok":
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    status_after_kill = _status(sweep)
    first_files = file_stamps(sweep / JOBS[0])
    continued = run_script(
        "train.py", *SWEEP, f"hydra.sweep.dir={sweep}", "resume=true", env=run_env, timeout=900
    )
    yield {
        "sweep": sweep,
        "status_after_kill": status_after_kill,
        "first_files": first_files,
        "continued": continued,
    }
    delete_big_files(sweep)


@pytest.mark.slow
def test_a_killed_sweep_continues_skipping_finished_jobs(continued_sweep):
    sweep, continued = continued_sweep["sweep"], continued_sweep["continued"]
    assert continued.returncode == 0, continued.stderr[-3000:]
    # The finished job was skipped: not one of its files was written again.
    assert f"{sweep / JOBS[0]}: finished earlier (status ok), skipped." in continued.stderr
    assert file_stamps(sweep / JOBS[0]) == continued_sweep["first_files"]
    # The last word is the sweep's: the skipped job counts as finished.
    assert continued.stderr.rstrip().splitlines()[-1] == (
        f"Sweep {sweep}: 4 ok (1 skipped: finished earlier)."
    )
    for job in JOBS:
        record = json.loads((sweep / job / "metrics.json").read_text())
        assert record["status"] == "ok", (job, record.get("error"))
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == JOBS  # same folders


@pytest.mark.slow
def test_the_status_view_shows_where_the_sweep_stands(continued_sweep):
    after_kill = continued_sweep["status_after_kill"]
    assert after_kill[JOBS[0]] == "done"
    # The jobs the command asked for are all listed, even those that had no folder yet.
    assert len(after_kill) == 4
    assert set(list(after_kill.values())[1:]) <= {"interrupted", "not started"}
    assert set(_status(continued_sweep["sweep"]).values()) == {"done"}
    shown = _analysis(str(continued_sweep["sweep"]), "--status")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "4 jobs: 4 done, 0 interrupted, 0 failed, 0 not started" in shown.stdout


@pytest.mark.slow
def test_the_analysis_of_several_sweep_folders_counts_each_job_once(continued_sweep, tmp_path):
    sweep = continued_sweep["sweep"]
    # A second folder: a re-run of job 1 that failed, and of job 2 that finished.
    rerun = tmp_path / "rerun"
    no_checkpoints = shutil.ignore_patterns("*.ckpt")  # the analysis reads none; 0.1 GB each
    for job in JOBS[1:3]:
        shutil.copytree(sweep / job, rerun / job, ignore=no_checkpoints)
    failed = rerun / JOBS[1] / "metrics.json"
    failed.write_text(json.dumps({"status": "failed", "error": "out of memory"}))
    runs = collect_runs([sweep, rerun, sweep])
    assert len(runs) == 4 and set(runs["status"]) == {"ok"}
    assert sorted(runs["seed"].tolist()) == [1, 1, 2, 2]
    # The other way round: the first folder's failed record gives way to the re-run's result.
    broken = tmp_path / "broken"
    shutil.copytree(sweep, broken, ignore=no_checkpoints)
    (broken / JOBS[2] / "metrics.json").write_text(json.dumps({"status": "failed", "error": "x"}))
    runs = collect_runs([broken, rerun]).set_index("job")
    assert runs.loc[f"rerun/{JOBS[2]}", "status"] == "ok"
    assert f"broken/{JOBS[2]}" not in runs.index and len(runs) == 4
    report = _analysis(
        str(sweep), str(rerun), "--no-notebook", "--out", str(tmp_path / "report"),
        "--resamples", "50",
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    assert "= 4 jobs (4 ok)" in (tmp_path / "report" / "report.md").read_text()


def test_the_local_launcher_survives_a_job_that_crashes_the_interpreter(run_env, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "hydra/launcher=local",
        "experiment=smoke",
        "fault.kill_at_step=1,null",  # job 0 ends with os._exit after its first step
        "fault.how=exit",
        f"hydra.sweep.dir={sweep}",
        env=run_env,
    )
    crashed = json.loads((sweep / "0_resnet18_scratch_bce_seed42" / "metrics.json").read_text())
    assert crashed["status"] == "failed"
    assert "process died" in crashed["error"]
    log = Path(crashed["error"].rsplit(" and ", 1)[1])  # the crashed job's own error log
    assert log.is_file()
    assert crashed["model"] == "resnet18"
    finished = json.loads((sweep / "1_resnet18_scratch_bce_seed42" / "metrics.json").read_text())
    assert finished["status"] == "ok"
    assert list((sweep / ".submitit").glob("*/*_log.err"))  # each job's own log
    # The sweep ends with one summary naming the failed job, and says so in its exit code.
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    summary = result.stderr[result.stderr.rindex(f"Sweep {sweep}: ") :].splitlines()
    assert summary[0] == f"Sweep {sweep}: 1 ok, 1 failed."
    assert summary[1].startswith(
        "  failed: 0_resnet18_scratch_bce_seed42 (RuntimeError: The job's process died"
    )
    assert summary[2:] == [
        f"  Errors and tracebacks: {sweep}/<job>/metrics.json",
        f"  Where each job stands: python -m celeba_gender.analysis {sweep} --status",
    ]


def test_ddp_trains_in_a_local_launchers_job(run_env, tmp_path):
    """hydra/launcher=local runs each job in a process of submitit's, whose program takes no
    Hydra arguments: the job's other rank starts as the sweep's command (train.py) does."""
    sweep = tmp_path / "sweep"
    result = run_script(
        "train.py", "-m", "hydra/launcher=local", "experiment=smoke", "trainer=ddp",
        "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32",
        "trainer.sync_batchnorm=false", "trainer.benchmark=false", f"hydra.sweep.dir={sweep}",
        env=run_env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((sweep / "0_resnet18_scratch_bce_seed42" / "metrics.json").read_text())
    assert (record["status"], record["world_size"]) == ("ok", 2), record.get("error")


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_sweep_without_its_pretrained_weights_stops_before_launching(run_env, tmp_path):
    """An empty torch hub cache on a machine whose downloads fail (a proxy nothing listens
    at): the sweep names the missing file before any job starts, in the words a single run
    uses when it finds the file missing."""
    proxy = f"http://127.0.0.1:{_unused_port()}"
    offline = {**run_env, "TORCH_HOME": str(tmp_path / "torch"), "NO_PROXY": "", "no_proxy": ""}
    offline.update({name: proxy for name in ("HTTPS_PROXY", "https_proxy")})
    sweep = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "experiment=smoke",
        "treatment=scratch_bce,pretrained_bce",
        f"hydra.sweep.dir={sweep}",
        env=offline,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert not sweep.exists()  # nothing launched, not even the sweep folder
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    assert lines[0].startswith(
        f"error: Pretrained weights missing from the torch hub cache {cache}: "
        "resnet18-f37072fd.pth (downloading it failed: "
    )
    assert lines[1:] == ["Nothing was launched."]
    single = run_script(
        "train.py",
        "experiment=smoke",
        "treatment=pretrained_bce",
        f"hydra.run.dir={tmp_path / 'run'}",
        env=offline,
    )
    assert single.returncode == 2
    assert lines[0] in single.stderr.splitlines()
    assert "Traceback" not in single.stderr + result.stderr


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """submitit's SLURM executor only checks that srun exists; nothing is submitted."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_the_slurm_launcher_config_writes_a_requeueing_sbatch_script(fake_slurm, tmp_path):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "hydra/launcher=slurm",
                "hydra.launcher.partition=gpu",
                "hydra.launcher.account=study",
                "hydra.launcher.timeout_min=720",
                f"hydra.sweep.dir={tmp_path}",
                "trainer=ddp",
            ],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    launcher = instantiate(cfg.hydra.launcher)
    assert launcher.params["tasks_per_node"] == launcher.params["gpus_per_node"] == 4
    assert launcher.params["max_num_timeout"] > 0
    script = launcher.executor()._executor._make_submission_file_text("python job.py", "uid")
    for line in (
        "#SBATCH --ntasks-per-node=4",  # one DDP rank per GPU, started by srun
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=study",
        "#SBATCH --time=720",
        "#SBATCH --signal=USR2@120",  # time to save last.ckpt before the limit
        "#SBATCH --requeue",
        f"#SBATCH --output={tmp_path}/.submitit/%j/%j_0_log.out",
    ):
        assert line in script.splitlines(), line
    assert "srun" in script.splitlines()[-1]
    # Requeued after a time limit, the job runs again with resume=true.
    again = launcher.checkpoint(
        ["treatment=scratch_ce", "resume=false"], "hydra.sweep.dir", 3, "id", {}
    )
    assert again.args[0] == ["treatment=scratch_ce", "resume=true"]
    assert again.args[2] == 3


def test_under_srun_ranks_come_from_slurm_and_nothing_is_spawned(monkeypatch):
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from celeba_gender.ranks import global_rank
    from celeba_gender.training.ddp import _JobLauncher

    for name, value in {
        "SLURM_NTASKS": "8",
        "SLURM_NTASKS_PER_NODE": "4",
        "SLURM_PROCID": "6",
        "SLURM_LOCALID": "2",
        "SLURM_NODEID": "1",
        "SLURM_NODELIST": "gpu[01-02]",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NAME": "train",
        "SLURM_JOB_ID": "1234",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    environment = SLURMEnvironment(auto_requeue=False)
    launcher = _JobLauncher(environment, num_processes=4, num_nodes=2)  # what trainer=ddp uses
    assert launcher.launch(lambda: "this rank's work") == "this rank's work"
    assert launcher.procs == []  # srun started the ranks: none spawned
    assert (environment.global_rank(), environment.local_rank(), environment.world_size()) == (
        6,
        2,
        8,
    )
    assert global_rank() == 6  # what decides who writes a run's files


def test_the_first_rank_of_a_second_node_is_not_rank_zero(monkeypatch):
    """Only the job's rank 0 writes its files: LOCAL_RANK=0 on node 1 is global rank 4 or so."""
    from celeba_gender.ranks import global_rank

    for name in ("RANK", "SLURM_PROCID", "GROUP_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "1")
    assert global_rank() != 0
    monkeypatch.setenv("NODE_RANK", "0")
    assert global_rank() == 0
    monkeypatch.setenv("RANK", "4")
    assert global_rank() == 4


@pytest.mark.slow
def test_a_sweep_refused_for_a_changed_setting_says_so_and_exits_1(
    continued_sweep, run_env, tmp_path
):
    """Resumed with another learning rate, every job is refused and its folder, which still
    says status ok from the first command, is left as it was: the sweep says "refused", not
    "ok", and exits 1. The original command then skips them all and exits 0."""
    sweep = tmp_path / "study"  # a copy (moved folders resume), without the checkpoints
    shutil.copytree(continued_sweep["sweep"], sweep, ignore=shutil.ignore_patterns("*.ckpt"))
    stamps = {job: file_stamps(sweep / job) for job in JOBS}
    changed = run_script(
        "train.py", *SWEEP, f"hydra.sweep.dir={sweep}", "resume=true", "optimizer.lr=0.5",
        env=run_env, timeout=600,
    )  # fmt: skip
    assert changed.returncode == 1, changed.stderr[-3000:]
    assert f"Sweep {sweep}: 0 ok, 4 refused." in changed.stderr
    for job in JOBS:
        assert f"  refused: {job} (resume=true, but this command's config differs" in changed.stderr
        assert file_stamps(sweep / job) == stamps[job]
    same = run_script(
        "train.py", *SWEEP, f"hydra.sweep.dir={sweep}", "resume=true", env=run_env, timeout=600
    )
    assert same.returncode == 0, same.stderr[-3000:]
    assert same.stderr.rstrip().splitlines()[-1] == (
        f"Sweep {sweep}: 4 ok (4 skipped: finished earlier)."
    )
