"""Analysis: from a sweep's run folders to tables, intervals, paired tests, fairness slices,
calibration, figures and conclusions (``python -m celeba_gender.analysis SWEEP_DIR``)."""

from __future__ import annotations

import importlib
from typing import Any

# Each name's module, imported when the name is first used (PEP 562): `python -m
# celeba_gender.analysis` loads this package before __main__.py, whose imports (numpy, torch,
# matplotlib: seconds) a Ctrl-C must be able to end at once (quiet_interrupt).
_HOMES = {
    "METRICS": "collect",
    "collect_runs": "collect",
    "read_predictions": "collect",
    "SweepAnalysis": "report",
    "analyze_sweep": "report",
    "execute_notebook": "report",
    "load_settings": "report",
    "reference_results": "report",
    "report_figures": "report",
    "write_report": "report",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:  # a submodule (from celeba_gender.analysis import tables) or a typo
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
