"""Reading a sweep: one row per job folder, from its metrics.json and .hydra/config.yaml.

A job that failed has ``status: failed`` in its metrics.json (written by the training run); a
job folder without metrics.json (killed, out of memory, still running) is ``missing``, and so is
a job the sweep's own record (``multirun.yaml``) lists whose folder is gone. All stay in the
table so a summary can never silently drop a configuration.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from celeba_gender.config import (  # also registers the resolvers the configs use
    CONFIG_DIR,
    compose_config,
    register_resolvers,
)
from celeba_gender.data import DataError
from celeba_gender.library_internals import expand_sweep
from celeba_gender.metrics import CLASSIFICATION_METRICS
from celeba_gender.progress import progress
from celeba_gender.spreadsheet import unquote_frame
from celeba_gender.training.outputs import (
    METRICS_FILE,
    PREDICTIONS_FILE,
    VAL_PREDICTIONS_FILE,
    run_facts,
)
from celeba_gender.training.resume import flatten_config, is_ignored, saved_config

log = logging.getLogger(__name__)
METRICS = CLASSIFICATION_METRICS
# What a final fit's experiment name ends with (data.final_fit: trained on the validation
# images too): its own configuration, never a seed of the validation-chosen one it repeats.
FINAL_FIT = "(final fit)"


def is_final_fit(experiment: object) -> bool:
    """Whether an experiment name (the analysis's) is a final fit's."""
    return isinstance(experiment, str) and experiment.endswith(FINAL_FIT)


def experiment_of(experiment: object) -> object:
    """The experiment a final fit repeats ("cpu_quick" for "cpu_quick (final fit)"; a final
    fit of no named experiment keeps its own name)."""
    if not is_final_fit(experiment):
        return experiment
    return experiment.removesuffix(FINAL_FIT).rstrip() or experiment


def final_fits(table: pd.DataFrame) -> pd.Series:
    """Which rows (runs or configurations) are final fits."""
    if "experiment" not in table:
        return pd.Series(False, index=table.index)
    return table["experiment"].map(is_final_fit)


# What identifies a run: conf/config.yaml's run_facts (column: config key), the same list
# that names the facts in each run's metrics.json. A job's saved config gives them when its
# metrics.json is missing or has no context.
@functools.cache
def run_fact_keys() -> dict[str, str]:
    """conf/config.yaml's run_facts (column: config key), read once, when first needed."""
    return dict(OmegaConf.load(CONFIG_DIR / "config.yaml").run_facts)


# The table's columns: "job", "status", the run facts (``run_fact_keys``), then these.
OTHER_COLUMNS = (
    *METRICS,
    "test_loss",
    "test_images",
    "best_val",
    "monitor",
    "epochs_trained",
    "params",
    "train_seconds",
    "train_images_per_second",
    "test_images_per_second",
    "wall_seconds",
    "missing_metrics",
    "error",
    "data_root",
    "run_dir",
)


def job_folders(sweep_dir: str | Path) -> list[Path]:
    """The job folders of a Hydra multirun folder (or the folder itself for a single run)."""
    sweep_dir = Path(sweep_dir).expanduser()
    if not sweep_dir.is_dir():
        raise DataError(
            f"Sweep folder {sweep_dir} does not exist: pass a folder under outputs/multiruns/ "
            "(or one run's folder under outputs/runs/)."
        )
    if _is_job(sweep_dir):
        return [sweep_dir]
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and _is_job(p)), key=_job_order)
    if not jobs:
        raise DataError(
            f"{sweep_dir} holds no training job: expected folders with .hydra/config.yaml or "
            f"{METRICS_FILE} (a `python train.py -m ...` sweep folder)."
        )
    return jobs


def expected_jobs(sweep_dir: Path) -> list[list[str]] | None:
    """The overrides of each job the sweep's command asked for, by job number, expanded as
    Hydra's basic sweeper expands them (None when the folder has no readable multirun.yaml, or
    is a search's, whose folders are its list)."""
    record = sweep_dir / "multirun.yaml"
    if not record.is_file():
        return None
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    try:
        sweeper = OmegaConf.select(OmegaConf.load(record), "hydra.sweeper._target_", default="")
        if not str(sweeper or "BasicSweeper").endswith("BasicSweeper"):
            return None  # a search (hparams_search=) chooses its jobs as it goes
        overrides = list(OmegaConf.load(record).hydra.overrides.task)
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            jobs = expand_sweep(overrides, GlobalHydra.instance().config_loader())
    except Exception as error:  # noqa: BLE001 - e.g. a config group renamed since
        log.warning("%s: cannot expand its jobs (%s); listing the folders only.", record, error)
        return None
    return jobs


def _expected_facts(overrides: list[str]) -> dict:
    """The run facts of a job that left no folder, from its config composed anew."""
    from hydra.core.global_hydra import GlobalHydra

    try:
        GlobalHydra.instance().clear()
        config = compose_config("config", overrides)
        return run_facts(config, {**run_fact_keys(), **(config.get("run_facts") or {})})
    except Exception as error:  # noqa: BLE001 - the configs changed since the sweep ran
        log.warning("cannot compose %s (%s): its row gives the overrides only.", overrides, error)
        return {}
    finally:
        GlobalHydra.instance().clear()


def _job_overrides(folder: Path) -> frozenset[str] | None:
    path = folder / ".hydra" / "overrides.yaml"
    try:
        return frozenset(OmegaConf.load(path)) if path.is_file() else None
    except Exception:  # noqa: BLE001 - an unreadable record only loses the match
        return None


def _deleted_jobs(sweep_dir: Path, present: list[Path]) -> list[tuple[str, list[str]]]:
    """(job number, overrides) of the jobs multirun.yaml lists that have no folder."""
    expected = expected_jobs(sweep_dir) or []
    numbers = {folder.name.split("_", 1)[0] for folder in present}
    return [(str(n), job) for n, job in enumerate(expected) if str(n) not in numbers]


def _is_job(folder: Path) -> bool:
    return (folder / ".hydra" / "config.yaml").is_file() or (folder / METRICS_FILE).is_file()


def _job_order(folder: Path) -> tuple[int, str]:
    number = folder.name.split("_", 1)[0]
    return (int(number) if number.isdigit() else 1 << 30, folder.name)


def _from_config(folder: Path) -> dict:
    path = folder / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    config = OmegaConf.load(path)
    facts = {**run_fact_keys(), **(config.get("run_facts") or {})}  # the job's own, if any
    return run_facts(config, facts)


def _read_metrics(folder: Path) -> dict:
    path = folder / METRICS_FILE
    if not path.is_file():
        return {"status": "missing", "error": f"no {METRICS_FILE}: the job did not finish"}
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return {"status": "missing", "error": f"unreadable {path}: {error}"}
    # "precision" in a run's description is the numeric precision (32, 16-mixed): keep the
    # metric names for the test metrics only.
    if "numeric_precision" not in record:  # records written before run_facts named it so
        record["numeric_precision"] = record.pop("precision", None)
    if record["numeric_precision"] is not None:  # 32 in older records, "32" now
        record["numeric_precision"] = str(record["numeric_precision"])
    # Test metrics lose their prefix (acc, f1, ...) except where the name is a run fact: the
    # test loss must not overwrite the loss function (loss: bce).
    record = {_metric_column(k, record): v for k, v in record.items()}
    if record.get("status") == "ok":
        # Flagged, and not counted as a seed of that metric (statistics.seed_summary).
        record["missing_metrics"] = ",".join(
            m
            for m in METRICS
            if not isinstance(record.get(m), (int, float)) or record[m] != record[m]
        )
    if record.get("status") == "failed":
        record["error"] = f"{record.get('error_type', 'Error')}: {record.get('error', '')}"
    return record


def _metric_column(key: str, record: dict) -> str:
    name = key.removeprefix("test/")
    # A run fact by name now (run_fact_keys) or in the record (its own run_facts): older records
    # lacking the fact must not put their test loss into the loss function's column.
    return f"test_{name}" if name != key and (name in run_fact_keys() or name in record) else name


STATUS_RANK = {"ok": 0, "interrupted": 1, "failed": 2, "missing": 3}


def _name_same_named_jobs_apart(runs: pd.DataFrame) -> None:
    """Jobs of folders with the same name in different places (runs/a/seed0, runs/b/seed0)
    are named by their paths below the folder they share, so that a job name is one run."""
    same = runs["job"].duplicated(keep=False)
    if not same.any():
        return
    folders = [Path(d).resolve() for d in runs.loc[same, "run_dir"]]
    common = Path(os.path.commonpath(folders))
    runs.loc[same, "job"] = [
        str(folder.relative_to(common)) if folder != common else str(folder) for folder in folders
    ]


def collect_runs(sweep_dirs: str | Path | Sequence[str | Path]) -> pd.DataFrame:
    """One row per job: status (ok / failed / interrupted / missing), what it was, and its test
    results. Several sweep folders (a sweep, a re-run of its failed jobs, more seeds) give one
    table in which a configuration run in more than one folder counts once: its best record
    (ok before interrupted, failed, missing; then the newest)."""
    register_resolvers()  # run configs may hold ${project_root:} (the analysis' entry point)
    folders = _sweep_folders(sweep_dirs)
    several = len(folders) > 1
    rows = []
    fact_names: set[str] = set()
    deleted: list[dict] = []
    for sweep_dir in folders:
        present = job_folders(sweep_dir) if not _lists_jobs_only(sweep_dir) else []
        for number, overrides in _deleted_jobs(sweep_dir, present):
            facts = _expected_facts(overrides)
            fact_names.update(facts)
            deleted.append(
                {
                    **facts,
                    "status": "missing",
                    "error": f"job {number} ({' '.join(overrides)}) is in the sweep's "
                    "multirun.yaml but its folder is gone: re-run the sweep's command to redo it",
                    "job": f"{sweep_dir.name}/{number}" if several else number,
                    "run_dir": str(sweep_dir / number),
                    "_overrides": frozenset(overrides),
                    "_key": f"deleted:{sweep_dir}/{number}",
                    "_order": (STATUS_RANK["missing"], 0.0),
                }
            )
        for folder in progress(present, desc=f"Reading {sweep_dir.name}", unit="job"):
            record = _read_metrics(folder)
            facts = _from_config(folder)
            fact_names.update(facts)
            row = {**facts, **{k: v for k, v in record.items() if v is not None}}
            row.update(
                job=f"{sweep_dir.name}/{folder.name}" if several else folder.name,
                run_dir=str(folder),
                _key=job_key(folder),
                _order=(STATUS_RANK.get(row.get("status"), 9), -_mtime(folder / METRICS_FILE)),
                _overrides=_job_overrides(folder),
            )
            rows.append(row)
    # A deleted job that another folder (a continued sweep) ran with the same overrides is
    # that folder's row.
    ran = {row["_overrides"] for row in rows if row["_overrides"] is not None}
    rows += [row for row in deleted if row["_overrides"] not in ran]
    if not rows:
        raise DataError(f"{', '.join(map(str, folders))}: no training job, run or listed.")
    runs = pd.DataFrame(rows).drop(columns="_overrides")
    runs = runs.sort_values("_order", kind="stable").drop_duplicates("_key")
    _name_same_named_jobs_apart(runs)
    # Facts some jobs' own run_facts add (one line in their config) join the table too.
    columns = ["job", "status", *run_fact_keys(), *OTHER_COLUMNS]
    added = [c for c in runs.columns if c in fact_names and c not in columns]
    at = columns.index(next(reversed(run_fact_keys()))) + 1
    runs = runs.sort_index().reindex(columns=[*columns[:at], *added, *columns[at:]])
    for column in ("seed", "depth", "image_size", "params", "test_images"):
        runs[column] = pd.to_numeric(runs[column]).astype("Int64")
    runs["error"] = runs["error"].astype(object).fillna("")
    runs["missing_metrics"] = runs["missing_metrics"].astype(object).fillna("")
    final = runs["final_fit"].eq(True)  # FINAL_FIT says why
    runs.loc[final, "experiment"] = [
        f"{name} {FINAL_FIT}" if isinstance(name, str) and name else FINAL_FIT
        for name in runs.loc[final, "experiment"]
    ]
    return runs.reset_index(drop=True)


def _lists_jobs_only(sweep_dir: Path) -> bool:
    """A sweep folder whose record lists jobs but that holds no job folder (all deleted)."""
    return (
        sweep_dir.is_dir()
        and (sweep_dir / "multirun.yaml").is_file()
        and not _is_job(sweep_dir)
        and not any(p.is_dir() and _is_job(p) for p in sweep_dir.iterdir())
    )


def _sweep_folders(sweep_dirs: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(sweep_dirs, (str, Path)):
        sweep_dirs = [sweep_dirs]
    unique: dict[Path, None] = {}
    for folder in sweep_dirs:
        unique.setdefault(Path(folder).expanduser().resolve(), None)  # the same folder twice
    return list(unique)


def job_key(folder: Path) -> str:
    """What makes two job folders the same job: the config it was started with, less the keys
    a resumed run may change (``resume_ignore``), e.g. where files live."""
    config = saved_config(folder)
    if config is None:
        return f"folder:{folder.resolve()}"
    ignore = [*config.get("resume_ignore", []), "hydra.*"]
    # A config saved unresolved (an old job's) may say ${hydra:...}: unknown outside Hydra.
    own = OmegaConf.select(
        OmegaConf.create(config), "paths.output_dir", default="", throw_on_resolution_failure=False
    )
    own = str(own or "")
    flat = {
        key: value
        for key, value in flatten_config(config).items()
        # Values under the job's own folder (checkpoints, logs) differ between any two jobs.
        if not is_ignored(key, ignore) and not (own and own in str(value))
    }
    return json.dumps(flat, sort_keys=True, default=str)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def read_predictions(run_dir: str | Path, part: str = "test") -> pd.DataFrame:
    """A run's saved per-image predictions (file_name, label, p_male) of ``test`` or ``val``."""
    name = PREDICTIONS_FILE if part == "test" else VAL_PREDICTIONS_FILE
    path = Path(run_dir) / name
    if not path.is_file():
        raise DataError(f"{path} does not exist: re-run the job, or evaluate it with eval.py.")
    frame = unquote_frame(pd.read_csv(path))
    missing = {"file_name", "label", "p_male"} - set(frame.columns)
    if missing:
        raise DataError(f"{path} lacks the columns {sorted(missing)}.")
    return frame
