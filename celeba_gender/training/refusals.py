"""Which jobs of a sweep were refused this time (a changed setting on resume, a value the
schema does not allow): a refused job leaves its own folder exactly as it was, so a folder
that still says "status ok" from an earlier run cannot tell the sweep's summary that this
command did not run it. Each refusal is a file in the sweep folder's ``.refused/`` instead,
written by the job (whatever the launcher: in-process, local processes, SLURM) and read by
``analysis.sweep_summary.SweepSummary``, which empties it when a sweep starts."""

from __future__ import annotations

import shutil
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

REFUSED_DIR = ".refused"


def record_refusal(output_dir: Path, message: str) -> None:
    """Note that the job in ``output_dir`` was refused, and why (in a sweep only)."""
    sweep_dir = Path(HydraConfig.get().sweep.dir)
    folder = sweep_dir / REFUSED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{output_dir.name}.txt").write_text(message + "\n")


def refused_jobs(sweep_dir: Path) -> dict[str, str]:
    """The jobs refused since the sweep started, by job folder name: why."""
    folder = sweep_dir / REFUSED_DIR
    if not folder.is_dir():
        return {}
    return {file.stem: file.read_text().strip() for file in sorted(folder.glob("*.txt"))}


def forget_refusals(sweep_dir: Path) -> None:
    """A new attempt at the sweep: earlier refusals no longer say anything."""
    shutil.rmtree(sweep_dir / REFUSED_DIR, ignore_errors=True)
