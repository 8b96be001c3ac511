"""The end of a ``-m`` sweep: one summary of its jobs, and an exit code that says whether all
of them finished.

``SweepSummary`` is a Hydra callback (conf/config.yaml ``hydra.callbacks``): its
``on_multirun_end`` runs in the process that launched the sweep once every job has returned,
whatever the launcher (in-process, ``hydra/launcher=local|slurm``) and whatever the sweeper.
It reads the jobs' folders through the status view (celeba_gender/analysis/status.py), so the
summary is ``python -m celeba_gender.analysis SWEEP --status`` in a few lines.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from omegaconf import DictConfig

from celeba_gender.analysis.collect import job_folders
from celeba_gender.analysis.status import job_state, sweep_status
from celeba_gender.data import DataError
from celeba_gender.training.outputs import METRICS_FILE
from celeba_gender.training.refusals import forget_refusals, refused_jobs
from celeba_gender.training.resume import say

log = logging.getLogger(__name__)

# The exit code of a sweep that has a job failed, interrupted or never run (the jobs' own
# codes stay in their folders; 2 is a config error before launch, 128 + n a signal).
UNFINISHED_EXIT_CODE = 1
# A job's error in the summary is its first line, cut to this many characters (the whole of
# it and the traceback are in the job's metrics.json).
ERROR_CHARS = 160
# The status view's states as the summary words them, in its order.
SHOWN_STATES = {
    "refused": "refused",
    "failed": "failed",
    "interrupted": "interrupted",
    "not started": "not run",
}


class SweepSummary(Callback):
    """Print one summary when a sweep ends, then exit with UNFINISHED_EXIT_CODE when any job
    did not finish; the results already written stay as they are."""

    def __init__(self) -> None:
        self.finished_before: set[str] = set()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # A continued sweep (resume=true) skips the jobs that finished earlier: known now.
        sweep_dir = Path(str(config.hydra.sweep.dir))
        self.finished_before = finished_jobs(sweep_dir)
        forget_refusals(sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        backup = get_gh_backup()  # the status view composes the sweep's jobs with Hydra anew
        try:
            table = with_refusals(sweep_status(sweep_dir), refused_jobs(sweep_dir))
            text = summary(table, sweep_dir, self.finished_before)
        except Exception as error:  # noqa: BLE001 - the jobs' results are written: say so, end
            say(f"Sweep {sweep_dir}: no summary ({error}).")
            return
        finally:
            restore_gh_from_backup(backup)
        say(text)
        if (table["state"] != "done").any():
            raise SystemExit(UNFINISHED_EXIT_CODE)  # no traceback: Hydra passes SystemExit on


def finished_jobs(sweep_dir: Path) -> set[str]:
    """The job folders of ``sweep_dir`` whose run finished (none for a new sweep)."""
    if not sweep_dir.is_dir():
        return set()
    try:
        folders = job_folders(sweep_dir)
    except DataError:  # a folder without jobs yet
        return set()
    return {folder.name for folder in folders if job_state(folder)["state"] == "done"}


def with_refusals(table: pd.DataFrame, refused: dict[str, str]) -> pd.DataFrame:
    """The status table with each job this command refused as "refused" (why as its detail),
    whatever its folder says from an earlier run."""
    if not refused:
        return table
    table = table.astype({"state": object, "detail": object})
    hit = table["job"].isin(refused)
    table.loc[hit, "state"] = "refused"
    table.loc[hit, "detail"] = table.loc[hit, "job"].map(refused)
    return table


def summary(table: pd.DataFrame, sweep_dir: Path, finished_before: set[str]) -> str:
    """The sweep's jobs in a few lines: the counts, each job that did not finish and why, and
    where to look: '3 ok (1 skipped: finished earlier), 1 failed: ...'."""
    done = table[table["state"] == "done"]
    skipped = int(done["job"].isin(finished_before).sum())
    counts = [f"{len(done)} ok" + (f" ({skipped} skipped: finished earlier)" if skipped else "")]
    lines = []
    for state, shown in SHOWN_STATES.items():
        jobs = table[table["state"] == state]
        if jobs.empty:
            continue
        counts.append(f"{len(jobs)} {shown}")
        for job, detail in zip(jobs["job"], jobs["detail"].fillna(""), strict=True):
            lines.append(f"  {shown}: {job} ({_first_line(detail)})")
    head = f"Sweep {sweep_dir}: {', '.join(counts)}."
    if not lines:
        return head
    advice = {
        "refused": "Refused jobs were not run and their folders are as they were",
        "failed": f"Errors and tracebacks: {sweep_dir}/<job>/{METRICS_FILE}",
        "interrupted": "Interrupted jobs continue with the same command and resume=true",
    }
    hints = [hint for state, hint in advice.items() if (table["state"] == state).any()]
    hints.append(f"Where each job stands: python -m celeba_gender.analysis {sweep_dir} --status")
    return "\n".join([head, *lines, *(f"  {hint}" for hint in hints)])


def _first_line(text: str) -> str:
    line = (str(text).strip().splitlines() or [""])[0]
    return line if len(line) <= ERROR_CHARS else line[: ERROR_CHARS - 3] + "..."
