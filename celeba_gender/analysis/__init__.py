"""Analysis: from a sweep's run folders to tables, intervals, paired tests, fairness slices,
calibration, figures and conclusions (``python -m celeba_gender.analysis SWEEP_DIR``)."""

from celeba_gender.analysis.collect import METRICS, collect_runs, read_predictions
from celeba_gender.analysis.report import (
    SweepAnalysis,
    analyze_sweep,
    execute_notebook,
    load_settings,
    reference_results,
    report_figures,
    write_report,
)

__all__ = [
    "METRICS",
    "SweepAnalysis",
    "analyze_sweep",
    "collect_runs",
    "execute_notebook",
    "load_settings",
    "read_predictions",
    "reference_results",
    "report_figures",
    "write_report",
]
