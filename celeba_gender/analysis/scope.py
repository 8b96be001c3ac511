"""What a sweep's report rests on: the data, sizes and caps of its runs, the jobs that did not
finish, and whether its numbers are a finding or only show the pipeline working.

``sweep_scope`` reads each job's saved config and ``data_summary.json`` (nothing is recomputed)
and returns a ``Scope``: the header lines of report.md, the banner when evaluation was capped
or too small for its intervals to mean anything, and the failed and missing jobs with one-line
reasons.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from celeba_gender.analysis.collect import experiment_of
from celeba_gender.config import CONFIG_DIR
from celeba_gender.training.resume import saved_config

# Lightning's caps on the batches of each loop: any value but the whole loop subsamples it.
LIMITS = (
    "limit_train_batches",
    "limit_val_batches",
    "limit_test_batches",
    "limit_predict_batches",
    "max_steps",
    "max_time",
)
# Caps of evaluation: the test metrics and the validation predictions that choose
# configurations (limit_predict_batches: the saved val_predictions.csv).
EVALUATION_LIMITS = ("limit_val_batches", "limit_test_batches", "limit_predict_batches")
DATA_SUMMARY = "data_summary.json"


@dataclass
class Scope:
    """What the report says it rests on (the header), and whether its numbers are a finding."""

    header: list[str]  # Markdown lines: experiment, data, parts, sizes, epochs, seeds, caps
    not_finished: pd.DataFrame  # job, configuration, status, reason: failed and missing jobs
    banner: str | None  # why the numbers show the pipeline, not a finding (None: they are one)
    capped_jobs: list[str] = field(default_factory=list)  # finished jobs with a capped loop


def _is_cap(name: str, value: object) -> bool:
    """Whether a trainer setting subsamples its loop (1.0 and None: the whole loop)."""
    if value is None:
        return False
    if name == "max_steps":
        return value not in (-1, None)
    if name == "max_time":
        return True
    return not (isinstance(value, float) and value == 1.0)  # an int counts batches


def run_caps(run_dir: str | Path) -> dict[str, object]:
    """The trainer's caps a run was started with (``LIMITS`` set to anything but the whole
    loop), from its saved config; {} for a run without one."""
    config = saved_config(Path(run_dir)) or {}
    trainer = config.get("trainer") or {}
    return {name: trainer[name] for name in LIMITS if _is_cap(name, trainer.get(name))}


def experiment_notes(runs: pd.DataFrame) -> dict[str, str]:
    """Each experiment's ``experiment_note`` (conf/experiment/*.yaml), from its runs' configs."""
    notes: dict[str, str] = {}
    for row in runs.itertuples():
        note = (saved_config(Path(row.run_dir)) or {}).get("experiment_note")
        name = str(experiment_of(row.experiment))  # a final fit's note is its experiment's
        if note and name not in notes:
            notes[name] = str(note).strip()
    return notes


def _absent(runs: pd.DataFrame, column: str, group: str) -> str:
    """'; not in this sweep: pretrained_bce' for the options of config group ``group``
    (conf/<group>/*.yaml) that no job of the sweep used."""
    known = sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))
    used = set(runs[column].dropna().astype(str))
    absent = [name for name in known if name not in used]
    return f"; not in this sweep: {', '.join(absent)}" if absent and used <= set(known) else ""


def _wall_time(runs: pd.DataFrame) -> str:
    """The jobs' own wall time summed, and the sweep's span: from the first job's saved config
    to the last metrics.json (a resumed sweep's pauses included)."""
    seconds = pd.to_numeric(runs.get("wall_seconds"), errors="coerce").sum()
    starts, ends = [], []
    for run_dir in runs["run_dir"]:
        config, metrics = Path(run_dir) / ".hydra" / "config.yaml", Path(run_dir) / "metrics.json"
        if config.is_file():
            starts.append(config.stat().st_mtime)
        if metrics.is_file():
            ends.append(metrics.stat().st_mtime)
    text = f"- Compute: {seconds / 60:.1f} min of job wall time (metrics.json `wall_seconds`)"
    if starts and ends and max(ends) > min(starts):
        span = (max(ends) - min(starts)) / 60
        text += f"; {span:.1f} min from the first job's start to the last one's end"
    return text + "."


def data_summary(run_dir: str | Path) -> dict:
    """The run's data_summary.json ({} when absent or unreadable)."""
    try:
        return json.loads((Path(run_dir) / DATA_SUMMARY).read_text())
    except (OSError, ValueError):
        return {}


def reason(error: object, limit: int = 160) -> str:
    """The first line of a job's error, cut to ``limit`` characters."""
    line = next((part.strip() for part in str(error or "").splitlines() if part.strip()), "")
    line = line or "no reason recorded"
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _text(value: object) -> str:
    """A value as a reader writes it: 3, not 3.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _values(series: pd.Series) -> str:
    values = sorted({_text(v) for v in series.dropna()}, key=lambda v: (len(v), v))
    return ", ".join(values) if values else "unknown"


def _sizes(runs: pd.DataFrame) -> str:
    """'48 px (inception_v3: 75 px)': the common size, and each model that differs."""
    sizes = runs.dropna(subset=["image_size"])
    if sizes.empty:
        return "unknown"
    common = sizes["image_size"].mode().iloc[0]
    other = sizes[sizes["image_size"] != common].drop_duplicates("model")
    text = f"{common} px"
    if not other.empty:
        text += " (" + "; ".join(f"{r.model}: {r.image_size} px" for r in other.itertuples()) + ")"
    return text


def _parts(summaries: dict[str, dict]) -> list[str]:
    """One line per distinct train/val/test partition the runs used."""
    seen: dict[str, list[str]] = {}
    for job, summary in summaries.items():
        parts = summary.get("parts") or {}
        if not parts:
            continue
        text = ", ".join(
            f"{name} {part.get('images', '?')} images"
            + (f" / {part['identities']} identities" if part.get("identities") is not None else "")
            for name, part in parts.items()
        )
        split = summary.get("split") or {}
        method = split.get("method", "?")
        disjoint = summary.get("identity_disjoint")
        text += f" (split `{method}`" + (
            ", no identity in two parts)"
            if disjoint is True
            else ", identities shared between parts)"
            if disjoint is False
            else ")"
        )
        seen.setdefault(text, []).append(job)
    if len(seen) <= 1:
        return [f"- Parts: {text}" for text in seen]
    return [f"- Parts ({len(jobs)} jobs, e.g. {jobs[0]}): {text}" for text, jobs in seen.items()]


def sweep_scope(runs: pd.DataFrame, max_interval_width: float, confidence: float) -> Scope:
    """The header, failed/missing jobs and banner of a sweep's report. A finished run's numbers
    are a finding only when none of its evaluation loops was capped and its test accuracy's
    interval (``acc_ci_low``..``acc_ci_high``) is at most ``max_interval_width`` wide."""
    ok = runs[runs["status"] == "ok"]
    summaries = {row.job: data_summary(row.run_dir) for row in ok.itertuples()}
    caps = {row.job: run_caps(row.run_dir) for row in runs.itertuples()}
    roots = {
        f"`{s.get('root')}` ({s.get('layout', 'unknown layout')})"
        for s in summaries.values()
        if s.get("root")
    }
    header = [
        f"- Experiment: {_values(runs['experiment'])}; {runs['model'].nunique()} backbones x "
        f"{runs['treatment'].nunique()} treatments = {len(runs)} jobs "
        f"({', '.join(f'{n} {s}' for s, n in runs['status'].value_counts().items())}).",
        *(f"- Note ({name}): {note}" for name, note in experiment_notes(runs).items()),
        f"- Backbones: {_values(runs['model'])}{_absent(runs, 'model', 'model')}.",
        f"- Treatments: {_values(runs['treatment'])}{_absent(runs, 'treatment', 'treatment')}.",
        f"- Data: {', '.join(sorted(roots)) or 'unknown (no data_summary.json)'}.",
        *_parts(summaries),
        f"- Image size: {_sizes(runs)}; epochs: {_values(runs['max_epochs'])} "
        f"(trained: {_values(ok['epochs_trained']) if 'epochs_trained' in ok else '?'}); "
        f"seeds: {_values(runs['seed'])}; batch size: {_values(runs['batch_size'])}.",
    ]
    header.append(_wall_time(runs))
    evaluated = ok["test_images"].dropna() if "test_images" in ok else pd.Series(dtype=float)
    if not evaluated.empty:
        header.append(
            f"- Test images evaluated per run: {_values(evaluated)}; validation images "
            f"(val_predictions.csv): {_values(ok['val_images']) if 'val_images' in ok else '?'}."
        )
    capped = {job: c for job, c in caps.items() if c}
    if capped:
        by_caps: dict[str, list[str]] = {}
        for job, job_caps in capped.items():
            key = ", ".join(f"`trainer.{k}={v}`" for k, v in job_caps.items())
            by_caps.setdefault(key, []).append(job)
        for key, jobs in by_caps.items():
            header.append(f"- Capped: {key} in {len(jobs)} of {len(runs)} jobs.")
    else:
        header.append("- Caps: none (no `trainer.limit_*`, `max_steps` or `max_time`).")
    subsampling = {
        str((s.get("split") or {}).get("train_per_class"))
        for s in summaries.values()
        if (s.get("split") or {}).get("train_per_class")
    }
    balance = {
        (s.get("balance") or {}).get("method")
        for s in summaries.values()
        if (s.get("balance") or {}).get("method") not in (None, "none")
    }
    if subsampling:
        header.append(f"- Training subsampled: {', '.join(subsampling)} images per class.")
    if balance:
        header.append(f"- Class balance: {', '.join(sorted(balance))}.")
    not_finished = runs[runs["status"] != "ok"]
    table = pd.DataFrame(
        {
            "job": not_finished["job"],
            "configuration": not_finished["model"].astype(str)
            + "/"
            + not_finished["treatment"].astype(str)
            + " seed "
            + not_finished["seed"].astype(str),
            "status": not_finished["status"],
            "reason": [reason(e) for e in not_finished["error"]],
        }
    )
    if not table.empty:
        header.append(
            f"- Did not finish: {len(table)} jobs (table below); every claim uses the "
            f"{len(ok)} finished runs only."
        )
    evaluation_capped = sorted(
        job for job in ok["job"] if set(caps.get(job, {})) & set(EVALUATION_LIMITS)
    )
    training_capped = sorted(
        job
        for job in ok["job"]
        if set(caps.get(job, {})) & {"limit_train_batches", "max_steps", "max_time"}
    )
    too_wide = []
    if {"acc_ci_low", "acc_ci_high"} <= set(ok.columns):
        widths = ok["acc_ci_high"].astype(float) - ok["acc_ci_low"].astype(float)
        too_wide = sorted(ok.loc[widths > max_interval_width, "job"])
    reasons = []
    if evaluation_capped:
        reasons.append(f"evaluation capped in {len(evaluation_capped)} of {len(ok)} finished runs")
    if training_capped:
        reasons.append(f"training capped in {len(training_capped)}")
    if too_wide:
        reasons.append(
            f"{len(too_wide)} runs have a {100 * confidence:g}% interval of test accuracy wider "
            f"than {100 * max_interval_width:g} points (too few test images or celebrities)"
        )
    banner = None
    if reasons:
        banner = (
            "**These numbers show the pipeline working, not a finding**: "
            + "; ".join(reasons)
            + f". A finding needs whole evaluation loops and intervals at most "
            f"{100 * max_interval_width:g} points wide (`finding.max_interval_width`: a 95% "
            "interval is about ±8 points with 140 independent test images at 50% accuracy, ±5 "
            "with 400). Names of a best below are the pipeline's output on this data, not "
            "evidence."
        )
    return Scope(
        header=header,
        not_finished=table.reset_index(drop=True),
        banner=banner,
        capped_jobs=sorted(set(evaluation_capped) | set(training_capped)),
    )
