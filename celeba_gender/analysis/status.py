"""Where a sweep stands: each job done, interrupted, failed or not started, with its error.

``python -m celeba_gender.analysis SWEEP --status``. The jobs a sweep should have come from
its own record (``multirun.yaml``: the command's overrides, expanded as Hydra's basic sweeper
expands them), so a job that never started still has a row.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from celeba_gender.analysis.collect import expected_jobs, job_folders
from celeba_gender.data import DataError
from celeba_gender.training.resume import LAST_CHECKPOINT, checkpoint_step, read_record

STATES = ("done", "interrupted", "failed", "not started")


def job_state(folder: Path) -> dict:
    """State, progress and error of one job folder."""
    record = read_record(folder)
    status = record.get("status")
    last = next(folder.glob(f"**/{LAST_CHECKPOINT}"), None)
    if status == "ok":
        return {"state": "done", "test_acc": record.get("test/acc")}
    if status == "failed":
        return {"state": "failed", "detail": f"{record.get('error_type')}: {record.get('error')}"}
    if status == "interrupted":
        return {
            "state": "interrupted",
            "detail": f"{record.get('signal')} at epoch {record.get('epoch')}, "
            f"step {record.get('global_step')}",
        }
    if last is not None:  # killed without a word (SIGKILL, out of memory, node failure)
        try:
            where = f"step {checkpoint_step(last)}"
        except Exception as error:  # noqa: BLE001 - a checkpoint that cannot be read
            where = f"unreadable checkpoint ({error})"
        return {"state": "interrupted", "detail": f"no final record; {LAST_CHECKPOINT} at {where}"}
    return {"state": "not started", "detail": "no checkpoint yet (running, or stopped early)"}


def sweep_status(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per job of the sweep: job, state, test_acc, detail."""
    sweep_dir = Path(sweep_dir).expanduser()
    expected = expected_jobs(sweep_dir) if sweep_dir.is_dir() else None
    try:
        found = job_folders(sweep_dir)
    except DataError:
        if not expected:
            raise
        found = []  # the sweep started no job yet
    folders = {folder.name.split("_", 1)[0]: folder for folder in found}
    rows = []
    numbers = [str(n) for n in range(len(expected))] if expected else list(folders)
    for number in numbers:
        folder = folders.pop(number, None)
        row = {"job": folder.name if folder else number}
        if expected:
            row["overrides"] = " ".join(expected[int(number)])
        row.update(job_state(folder) if folder else {"state": "not started", "detail": "no folder"})
        rows.append(row)
    for folder in folders.values():  # folders the record does not list
        rows.append({"job": folder.name, **job_state(folder)})
    return pd.DataFrame(rows).reindex(columns=["job", "state", "test_acc", "detail", "overrides"])


def format_status(table: pd.DataFrame) -> str:
    counts = table["state"].value_counts()
    summary = ", ".join(f"{int(counts.get(state, 0))} {state}" for state in STATES)
    shown = table.drop(columns=["overrides"]).fillna("")
    return f"{len(table)} jobs: {summary}\n" + shown.to_string(index=False)
