"""Sweep launchers: every job in its own process, on this machine or on a SLURM cluster.

Thin subclasses of hydra-submitit-launcher's launchers (configs: conf/hydra/launcher/local.yaml
and slurm.yaml) that add what a long study needs:

- a job whose process dies (segfault, out of memory, ``os._exit``) is recorded as failed in its
  folder and the sweep goes on, instead of the whole sweep ending with an exception;
- ``max_parallel_jobs`` on the local launcher (1 by default: jobs one after another), and
  ``results_wait_s``: how long a job that ended may take to show its results (1 s locally);
- a SLURM job requeued after its time limit runs with ``resume=true``, so it continues from the
  ``last.ckpt`` it saved when the time-limit signal came.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    BaseSubmititLauncher,
    LocalLauncher,
    SlurmLauncher,
)
from omegaconf import OmegaConf, open_dict

from celeba_gender.library_internals import submitit_cluster, wait_for_results_at_most
from celeba_gender.training.ddp import entry_point, run_ranks_as

log = logging.getLogger(__name__)


class _RecordingLauncher(BaseSubmititLauncher):
    """Submits jobs like hydra-submitit-launcher, then records jobs that died."""

    def __init__(
        self,
        max_parallel_jobs: int | None = None,
        results_wait_s: float | None = None,
        **params: Any,
    ) -> None:
        super().__init__(**params)
        self.max_parallel_jobs = max_parallel_jobs
        self.results_wait_s = results_wait_s  # None: submitit's (15 s, for shared disks)
        self.sweep_entry_point: list[str] | None = None  # set by launch

    def executor(self) -> Any:
        """The submitit executor with this launcher's parameters (as the base class builds it)."""
        import submitit

        init_keys = {"max_num_timeout"}
        cluster = submitit_cluster(self)
        executor = submitit.AutoExecutor(
            cluster=cluster,
            folder=self.params["submitit_folder"],
            **{f"{cluster}_{k}": v for k, v in self.params.items() if k in init_keys},
        )
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                k if k in base else f"{cluster}_{k}": v
                for k, v in self.params.items()
                if k not in init_keys | {"submitit_folder"}
            }
        )
        return executor

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """A job in its own process (submitit unpickles this launcher there): started as the
        command starts (start_command)."""
        from celeba_gender.startup import start_command

        start_command()
        if self.sweep_entry_point:
            run_ranks_as(self.sweep_entry_point)
        return super().__call__(*args, **kwargs)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        assert self.config is not None
        self.sweep_entry_point = entry_point()  # pickled with this launcher into each job
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        executor = self.executor()
        arguments = []
        for number, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
            arguments.append((list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}"))
        step = self.max_parallel_jobs or len(arguments)
        returns = []
        for start in range(0, len(arguments), step):
            chunk = arguments[start : start + step]
            state = Singleton.get_state()
            jobs = executor.map_array(self, *zip(*[(*a, state) for a in chunk], strict=True))
            returns += [self._result(job, a) for job, a in zip(jobs, chunk, strict=True)]
        return returns

    def _result(self, job: Any, arguments: tuple) -> JobReturn:
        overrides, _, number, _ = arguments
        if self.results_wait_s is not None:
            wait_for_results_at_most(job, self.results_wait_s)
        try:
            return job.results()[0]
        except Exception as error:  # noqa: BLE001 - the job's process died: record, go on
            folder = self._job_folder(overrides, number)
            message = (
                f"The job's process died (state {job.state}) before writing its results: "
                f"{str(error).strip().splitlines()[0]}\n"
                f"Its output: {job.paths.stdout} and {job.paths.stderr}"
            )
            log.error("Job #%d failed; recorded in %s. The sweep goes on.", number, folder)
            _record_crash(folder, message, self._job_config(overrides, number))
            result = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
            result.return_value = None
            return result

    def _job_config(self, overrides: Sequence[str], number: int) -> Any:
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config.hydra.job):
            config.hydra.job.num = number
        return config

    def _job_folder(self, overrides: Sequence[str], number: int) -> Path:
        config = self._job_config(overrides, number)
        return Path(str(self.config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)


def _record_crash(folder: Path, message: str, config: Any) -> None:
    """Write a failed status into a crashed job's folder, unless the job finished after all."""
    from celeba_gender.training.outputs import write_failure
    from celeba_gender.training.resume import read_record
    from celeba_gender.training.run import describe

    if read_record(folder).get("status") in ("ok", "interrupted"):
        return  # it finished, or it stopped on a signal and said so
    try:
        context = describe(config)
    except Exception:  # noqa: BLE001 - a config that cannot describe itself
        context = {}
    write_failure(folder, RuntimeError(message), context)


class LocalJobLauncher(_RecordingLauncher, LocalLauncher):
    """Each job in its own process on this machine (``max_parallel_jobs`` at a time)."""


class SlurmJobLauncher(_RecordingLauncher, SlurmLauncher):
    """Each job a SLURM array task; after a time limit the job is requeued with resume=true."""

    def checkpoint(self, sweep_overrides: list[str], *args: Any, **kwargs: Any) -> Any:
        import submitit

        overrides = [o for o in sweep_overrides if not o.lstrip("+~").startswith("resume=")]
        return submitit.helpers.DelayedSubmission(
            self, [*overrides, "resume=true"], *args, **kwargs
        )
