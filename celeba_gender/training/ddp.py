"""DDP that works inside a Hydra multirun.

Lightning's ``ddp`` strategy starts ranks 1..N-1 by re-running ``sys.argv``. Under ``-m`` that
argv is the whole sweep, so every child rank would start a sweep of its own. Here the child
ranks re-run *this job* instead: the entry point with the job's saved ``.hydra/config.yaml`` as
its config and the job's output folder as its run folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch.distributed
from lightning.pytorch.strategies import DDPStrategy

from celeba_gender.library_internals import private, set_launcher

# Lightning's private launcher of the other ranks (no public API starts them per Hydra job);
# the names overridden below are checked with the others (library_internals.LIGHTNING_NAMES).
_SubprocessScriptLauncher = private(
    "lightning.pytorch.strategies.launchers.subprocess_script", "_SubprocessScriptLauncher"
)

# Variables a DDP launch sets in the parent process; a later job of the same sweep must not
# inherit them (with LOCAL_RANK set, Lightning would wait for ranks nobody starts).
DISTRIBUTED_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "GROUP_RANK",
    "RANK",
    "LOCAL_WORLD_SIZE",
    "PL_GLOBAL_SEED",
    "PL_SEED_WORKERS",
)


_sweep_entry_point: list[str] | None = None  # in a launcher's job process: see run_ranks_as


def entry_point() -> list[str]:
    """The command this process runs as: the script (train.py, a console script) or the module
    (python -m celeba_gender.train); in a launcher's job, the command that started the sweep."""
    import __main__

    if _sweep_entry_point is not None:
        return list(_sweep_entry_point)
    if getattr(__main__, "__spec__", None) is None:
        return [sys.executable, os.path.abspath(sys.argv[0])]
    return [sys.executable, "-m", __main__.__spec__.name]


def run_ranks_as(command: Sequence[str]) -> None:
    """A launcher's job process (hydra/launcher=local or slurm) runs submitit's own module,
    which takes no Hydra arguments: its other DDP ranks start the sweep's command instead
    (``entry_point()`` in the process that launched the job)."""
    global _sweep_entry_point
    _sweep_entry_point = list(command)


def job_rank_command(local_rank: int) -> Sequence[str]:
    """The command that runs the current Hydra job again as ``local_rank``."""
    from hydra.core.hydra_config import HydraConfig

    output_dir = Path(HydraConfig.get().runtime.output_dir)
    saved = output_dir / ".hydra"
    if not (saved / "config.yaml").is_file():
        raise RuntimeError(
            f"DDP needs the job's saved config at {saved / 'config.yaml'}; keep "
            "hydra.output_subdir at its default (.hydra)."
        )
    return [
        *entry_point(),
        "--config-path",
        str(saved),
        "--config-name",
        "config",
        # Quoted for Hydra's override parser: a folder may hold spaces, '=' or brackets.
        f"hydra.run.dir={quote_override(str(output_dir))}",
        "hydra.output_subdir=null",
        f"hydra.job.name=ddp_rank_{local_rank}",
    ]


def quote_override(value: str) -> str:
    """``value`` as one single-quoted Hydra override value. Hydra reads backslashes literally
    except before a quote or at the end, where they are doubled, and a quote is escaped."""
    value = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    value = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, value)
    return f"'{value}'"


class _JobLauncher(_SubprocessScriptLauncher):
    def _call_children_scripts(self) -> None:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return super()._call_children_scripts()
        self._check_can_spawn_children()
        os.environ["MASTER_ADDR"] = self.cluster_environment.main_address
        os.environ["MASTER_PORT"] = str(self.cluster_environment.main_port)
        os.environ["NODE_RANK"] = str(self.cluster_environment.node_rank())
        os.environ["LOCAL_RANK"] = str(self.cluster_environment.local_rank())
        os.environ["WORLD_SIZE"] = f"{self.num_processes * self.num_nodes}"
        node_rank = self.cluster_environment.node_rank()
        # RANK too: which process is the job's rank 0 (it alone writes the run's files) is
        # not LOCAL_RANK on a second node.
        os.environ["RANK"] = str(node_rank * self.num_processes)
        for local_rank in range(1, self.num_processes):
            rank = node_rank * self.num_processes + local_rank
            env = {**os.environ, "LOCAL_RANK": str(local_rank), "RANK": str(rank)}
            self.procs.append(subprocess.Popen(job_rank_command(local_rank), env=env))
        return None


class HydraJobDDPStrategy(DDPStrategy):
    """``DDPStrategy`` whose child ranks re-run the current job, not the sweep."""

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if isinstance(self.launcher, _SubprocessScriptLauncher):
            set_launcher(
                self, _JobLauncher(self.cluster_environment, self.num_processes, self.num_nodes)
            )


def reset_distributed_state(environ_before: dict[str, str]) -> None:
    """Leave the process as the next job of a sweep expects it: no process group, no rank env."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for name in DISTRIBUTED_ENV:
        if name in environ_before:
            os.environ[name] = environ_before[name]
        else:
            os.environ.pop(name, None)
