"""Hyperparameter search (hparams_search=lr_wd, celeba_gender/training/search.py): trials as run
folders, a killed search resumed to n_trials, the best values, one study per backbone, failed
trials told FAIL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import forked_python
import optuna
import pytest
from conftest import REPO, delete_big_files, file_stamps, run_script
from omegaconf import OmegaConf
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from celeba_gender.analysis.collect import collect_runs, expected_jobs
from celeba_gender.training.search import SearchError, search_space, study_plans

# Three trials of two short epochs, last.ckpt every step: a trial killed mid-run can continue.
SEARCH = (
    "-m",
    "hparams_search=lr_wd",
    "model=resnet18",
    "experiment=smoke",
    "hydra.sweeper.n_trials=3",
    "trainer.max_epochs=2",
    "checkpoint_every_n_steps=1",
    "logger=none",
)
TRIALS = [f"{n}_resnet18_scratch_bce_seed42" for n in range(3)]


def _trials(sweep: Path, study: str = "search") -> list:
    storage = JournalStorage(JournalFileBackend(str(sweep / "optuna.journal")))
    return optuna.load_study(study_name=study, storage=storage).get_trials()


def _record(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


@pytest.fixture(scope="module")
def resumed_search(run_env, tmp_path_factory) -> Iterator[dict]:
    """A 3-trial search killed (SIGKILL) while its second trial trains, then resumed."""
    sweep = tmp_path_factory.mktemp("search") / "lr_wd"
    command = [sys.executable, str(REPO / "train.py"), *SEARCH, f"hydra.sweep.dir={sweep}"]
    env = {**{k: v for k, v in os.environ.items() if k != "CELEBA_ROOT"}, **run_env}
    process = forked_python.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    second = sweep / TRIALS[1] / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline and not second.is_file():
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    after_kill = {t.number: t.state for t in _trials(sweep)}
    first_files = file_stamps(sweep / TRIALS[0])
    resumed = run_script(
        "train.py", *SEARCH, f"hydra.sweep.dir={sweep}", "resume=true", env=run_env, timeout=600
    )
    yield {
        "sweep": sweep,
        "after_kill": after_kill,
        "first_files": first_files,
        "resumed": resumed,
    }
    delete_big_files(sweep)


def test_a_killed_search_resumes_to_n_trials_keeping_finished_trials(resumed_search):
    sweep, resumed = resumed_search["sweep"], resumed_search["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # Killed while trial 1 trained: trial 0 told, trial 1 running, trial 2 not asked yet.
    assert resumed_search["after_kill"] == {0: TrialState.COMPLETE, 1: TrialState.RUNNING}
    # Trial 0 was not run again: not one of its files was written.
    assert file_stamps(sweep / TRIALS[0]) == resumed_search["first_files"]
    # Trial 1 continued in its own folder from the last.ckpt it had saved.
    output = resumed.stdout + resumed.stderr
    assert f"Resuming from {sweep / TRIALS[1] / 'checkpoints' / 'last.ckpt'}" in output
    trials = _trials(sweep)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == TRIALS
    for trial, folder in zip(trials, TRIALS, strict=True):
        record = _record(sweep / folder)
        assert record["status"] == "ok", (folder, record.get("error"))
        assert trial.value == record["best_val"]  # the objective: the run's best val/acc
        assert record["lr"] == trial.params["optimizer.lr"]
        assert record["weight_decay"] == trial.params["optimizer.weight_decay"]  # a run fact
    assert len({t.params["optimizer.lr"] for t in trials}) == 3  # no values drawn twice


def test_the_best_values_file_names_the_best_trial(resumed_search):
    sweep = resumed_search["sweep"]
    best = OmegaConf.to_container(OmegaConf.load(sweep / "optuna_best.yaml"))
    study = best["studies"]["search"]
    values = {folder: _record(sweep / folder)["best_val"] for folder in TRIALS}
    assert study["best_value"] == max(values.values())
    assert values[study["run_dir"]] == study["best_value"]
    assert _record(sweep / study["run_dir"])["lr"] == study["best_params"]["optimizer.lr"]
    assert f"optimizer.lr={study['best_params']['optimizer.lr']}" in study["overrides"]
    assert study["trials"] == {"complete": 3, "failed": 0}
    resumed = resumed_search["resumed"]
    assert "Best values (val/acc, maximize)" in resumed.stdout + resumed.stderr


def test_the_status_view_and_the_analysis_read_the_trials(resumed_search):
    sweep = resumed_search["sweep"]
    shown = forked_python.run(
        [sys.executable, "-m", "celeba_gender.analysis", str(sweep), "--status"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "3 jobs: 3 done, 0 interrupted, 0 failed, 0 not started" in shown.stdout
    runs = collect_runs(sweep)
    assert list(runs["status"]) == ["ok"] * 3 and runs["lr"].nunique() == 3
    assert runs["weight_decay"].nunique() == 3


def test_a_search_folder_is_not_searched_again_without_resume(resumed_search, run_env):
    sweep = resumed_search["sweep"]
    before = file_stamps(sweep)
    again = run_script("train.py", *SEARCH, f"hydra.sweep.dir={sweep}", env=run_env)
    assert again.returncode == 2
    assert "holds a search already. Pass resume=true to continue it" in again.stderr
    assert file_stamps(sweep) == before


def test_a_search_resumed_with_another_setting_is_refused(resumed_search, run_env):
    """Three epochs instead of two would add trials of another search to the study: refused,
    naming the change; what may change on resume (a logger) is no change, and the finished
    search has nothing left to run. Each trial's overrides are those it was asked with."""
    sweep = resumed_search["sweep"]
    before = file_stamps(sweep)
    changed = [o.replace("max_epochs=2", "max_epochs=3") for o in SEARCH]
    refused = run_script("train.py", *changed, f"hydra.sweep.dir={sweep}", "resume=true",
                         "hydra.sweeper.n_trials=4", env=run_env)  # fmt: skip
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "was started with another search" in refused.stderr
    assert "trainer.max_epochs=2" in refused.stderr and "trainer.max_epochs=3" in refused.stderr
    assert file_stamps(sweep) == before
    logged = [o.replace("logger=none", "logger=csv") for o in SEARCH]
    same = run_script("train.py", *logged, f"hydra.sweep.dir={sweep}", "resume=true", env=run_env)
    assert same.returncode == 0, same.stderr[-3000:]
    asked = _trials(sweep)[2]  # asked by the resumed command: its overrides, less resume=true
    assert f"optimizer.lr={asked.params['optimizer.lr']}" in asked.user_attrs["overrides"]
    assert "trainer.max_epochs=2" in asked.user_attrs["overrides"]
    assert "resume=true" not in asked.user_attrs["overrides"]


def test_one_study_per_backbone_and_failed_trials_do_not_stop_the_search(run_env, tmp_path):
    sweep = tmp_path / "search"
    result = run_script(
        "train.py",
        *SEARCH[:2],
        "model=resnet18,vgg11",
        "experiment=smoke",
        "hydra.sweeper.n_trials=1",
        "data.root=/nonexistent/celeba",  # every trial fails reading its data
        f"hydra.sweep.dir={sweep}",
        env=run_env,
    )
    # Both studies ran and the search reached its end (its exit status is the sweep-end
    # summary's business: failed jobs may make it non-zero).
    assert "Best values (val/acc, maximize)" in result.stdout + result.stderr, result.stderr[-3000:]
    for study, folder in (
        ("model=resnet18", "0_resnet18_scratch_bce_seed42"),
        ("model=vgg11", "1_vgg11_scratch_bce_seed42"),
    ):
        assert [t.state for t in _trials(sweep, study)] == [TrialState.FAIL]
        assert _record(sweep / folder)["status"] == "failed"
    best = OmegaConf.load(sweep / "optuna_best.yaml").studies
    assert best["model=vgg11"].best_value is None and best["model=vgg11"].trials.failed == 1
    # The search's jobs are its trial folders, not the basic sweeper's expansion of its command
    # (which would list model=vgg11 as job 1 and no second trial of either model).
    assert expected_jobs(sweep) is None


def test_the_search_space_and_the_studies_come_from_hydra_sweep_syntax():
    space, fixed = search_space(
        {
            "optimizer.lr": "tag(log, interval(1e-5, 1e-2))",
            "optimizer": {"weight_decay": "interval(0.0, 0.1)"},
            "data.batch_size": "choice(4, 8)",
            "seed": 7,
        }
    )
    assert space["optimizer.lr"] == optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)
    assert space["optimizer.weight_decay"] == optuna.distributions.FloatDistribution(0.0, 0.1)
    assert space["data.batch_size"] == optuna.distributions.CategoricalDistribution([4, 8])
    assert fixed == ["seed=7"]
    command = ["model=resnet18,vgg11", "treatment=scratch_ce,scratch_bce", "seed=1"]
    plans = study_plans(command, None)
    assert [p.name for p in plans] == [
        "model=resnet18 treatment=scratch_ce",
        "model=resnet18 treatment=scratch_bce",
        "model=vgg11 treatment=scratch_ce",
        "model=vgg11 treatment=scratch_bce",
    ]
    assert plans[0].overrides == ["model=resnet18", "treatment=scratch_ce", "seed=1"]
    with pytest.raises(SearchError, match="goes in the search space"):
        study_plans(["optimizer.lr=interval(1e-5,1e-2)"], None)
    with pytest.raises(SearchError, match="data.final_fit cannot be searched"):
        search_space(
            {"optimizer.lr": "interval(1e-5,1e-2)", "data.final_fit": "choice(false,true)"}
        )


def test_a_search_without_its_pretrained_weights_or_on_a_final_fit_stops_before_any_trial(
    run_env, tmp_path
):
    """As a sweep does (ValidateSweep): the missing weights file named before the first trial,
    instead of every trial failing on it; and a final fit (no validation part to judge trials
    by) refused, where each trial failed in turn."""
    with socket.socket() as probe:  # a proxy nothing listens at: downloads fail at once
        probe.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{probe.getsockname()[1]}"
    offline = {**run_env, "TORCH_HOME": str(tmp_path / "torch"), "NO_PROXY": "", "no_proxy": ""}
    offline.update({name: proxy for name in ("HTTPS_PROXY", "https_proxy")})
    sweep = tmp_path / "search"
    result = run_script(
        "train.py", *SEARCH, "treatment=pretrained_bce", "data.final_fit=true",
        f"hydra.sweep.dir={sweep}", env=offline,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error: Pretrained weights missing from the torch hub cache" in result.stderr
    assert "data.final_fit=true trains on the validation images" in result.stderr
    assert "resnet18-f37072fd.pth" in result.stderr and "Nothing was launched." in result.stderr
    assert not sweep.exists() and "Traceback" not in result.stderr
