"""The report's Markdown tables: narrow, with percentages rounded to what their intervals
support and parameters in millions (the CSVs beside report.md keep every column unrounded)."""

from __future__ import annotations

import pandas as pd

from celeba_gender.analysis import conclusions
from celeba_gender.analysis.collect import METRICS
from celeba_gender.analysis.statistics import metric_seeds


def markdown(frame: pd.DataFrame) -> str:
    """A Markdown table of already formatted cells (tabulate would re-parse "0.0" as 0)."""
    if frame.empty:
        return "(none)"
    return (
        frame.astype(str)
        .replace({"nan": "—", "<NA>": "—", "None": "—"})
        .to_markdown(index=False, disable_numparse=True)
    )


def _decimals(width: float) -> int:
    """Decimals of a percentage that an interval ``width`` (a fraction) supports: one below
    a 1-point-wide interval's resolution, none for intervals over 20 points."""
    if pd.isna(width) or width <= 0:
        return 1
    return 0 if width > 0.2 else 1 if width > 0.01 else 2


def _percent(value: object, decimals: int = 1) -> str:
    return "—" if value is None or pd.isna(value) else f"{100 * float(value):.{decimals}f}"


def interval_cell(value: object, low: object, high: object) -> str:
    """'91.3 [88.6, 93.8]' in percent, rounded to what the interval supports."""
    if value is None or pd.isna(value):
        return "—"
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return _percent(value)
    places = _decimals(float(high) - float(low))
    return f"{_percent(value, places)} [{_percent(low, places)}, {_percent(high, places)}]"


def _spread(mean: object, std: object, seeds: int) -> str:
    """'91.3 ± 0.4' over several seeds, '91.3' for one (no spread to show)."""
    if mean is None or pd.isna(mean):
        return "—"
    if seeds > 1 and std is not None and pd.notna(std):
        return f"{_percent(mean)} ± {_percent(std)}"
    return _percent(mean)


def _millions(value: object) -> str:
    return "—" if value is None or pd.isna(value) else f"{float(value) / 1e6:.1f}"


def _minutes(value: object) -> str:
    return "—" if value is None or pd.isna(value) else f"{float(value) / 60:.1f}"


def configuration_table(configurations: pd.DataFrame) -> pd.DataFrame:
    """The configurations, best validation first, narrow enough to read: percentages rounded
    to what their intervals support, parameters in millions (configurations.csv has all)."""
    table = conclusions.ranked(configurations, with_final_fits=True)
    rows = []
    for rank, row in table.iterrows():
        seeds = int(row["ok"])
        interval = (
            interval_cell(row["acc_mean"], row.get("acc_ci_low"), row.get("acc_ci_high"))
            if metric_seeds(row, "acc") == 1
            else _spread(row["acc_mean"], row.get("acc_std"), metric_seeds(row, "acc"))
        )
        rows.append(
            {
                "#": rank + 1,
                "configuration": conclusions.configuration_name(row),
                "seeds ok/all": f"{seeds}/{int(row['runs'])}",
                "val acc %": _spread(
                    row.get("val_acc_mean"), row.get("val_acc_std"), metric_seeds(row, "val_acc")
                ),
                "test acc %": interval,
                "F1 %": _spread(row.get("f1_mean"), row.get("f1_std"), metric_seeds(row, "f1")),
                "AUROC %": _percent(row.get("auroc_mean")),
                "params M": _millions(row.get("params_mean")),
                "train min": _minutes(row.get("train_seconds_mean")),
                "theirs %": _percent(row.get("study_acc (theirs)")),
            }
        )
    return pd.DataFrame(rows)


def run_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Every job, failed and missing ones included, narrow (runs.csv has every column)."""
    rows = []
    for _, run in runs.iterrows():
        ok = run["status"] == "ok"
        rows.append(
            {
                "job": run["job"],
                # A finished run without a metric says which (left out of that mean).
                "status": f"ok (no {run['missing_metrics']})"
                if ok and run.get("missing_metrics")
                else run["status"],
                "val acc %": _percent(run.get("val_acc")) if ok else "",
                "test acc % [interval]": interval_cell(
                    run.get("acc"), run.get("acc_ci_low"), run.get("acc_ci_high")
                )
                if ok
                else "",
                "F1 %": _percent(run.get("f1")) if ok else "",
                "test / val images": f"{run.get('test_images')} / {run.get('val_images')}"
                if ok
                else "",
                "train min": _minutes(run.get("train_seconds")) if ok else "",
            }
        )
    return pd.DataFrame(rows)


def interval_table(ok: pd.DataFrame) -> pd.DataFrame:
    """Each finished run's metrics with their bootstrap intervals, one cell per metric."""
    rows = []
    for _, run in ok.iterrows():
        row = {"job": run["job"], "resampled": run.get("resampled", "")}
        for metric in METRICS:
            row[f"{metric} %"] = interval_cell(
                run.get(metric), run.get(f"{metric}_ci_low"), run.get(f"{metric}_ci_high")
            )
        rows.append(row)
    return pd.DataFrame(rows)


def paired_table(paired: pd.DataFrame) -> pd.DataFrame:
    """The validation-best configuration's paired tests, one row per other and seed."""
    if paired.empty:
        return paired
    return pd.DataFrame(
        {
            "against": paired["b"],
            "seed": paired["seed"],
            "images": paired["images"],
            "only best right": paired["a_only_correct"],
            "only other right": paired["b_only_correct"],
            "difference, points": [
                interval_cell(d, low, high)
                for d, low, high in zip(
                    paired["accuracy_difference"],
                    paired["difference_low"],
                    paired["difference_high"],
                    strict=True,
                )
            ],
            "p": paired["p_value"].map(lambda p: f"{p:.2g}"),
            "Holm p": paired["p_holm"].map(lambda p: f"{p:.2g}"),
            "significant": paired["significant"].map({True: "yes", False: "no"}),
        }
    )


def calibration_table(ok: pd.DataFrame) -> pd.DataFrame:
    """ECE and the validation-tuned threshold's effect, per finished run."""
    if ok.empty or "ece" not in ok:
        return pd.DataFrame()
    rows = []
    for _, run in ok.iterrows():
        rows.append(
            {
                "job": run["job"],
                "ECE": "—" if pd.isna(run.get("ece")) else f"{run['ece']:.3f}",
                "val-F1 threshold": "—"
                if pd.isna(run.get("val_f1_threshold"))
                else f"{run['val_f1_threshold']:.2f}",
                "acc % at 0.5": _percent(run.get("acc_at_0.5")),
                "acc % at threshold": _percent(run.get("acc_at_val_threshold")),
                "F1 % at 0.5": _percent(run.get("f1_at_0.5")),
                "F1 % at threshold": _percent(run.get("f1_at_val_threshold")),
            }
        )
    return pd.DataFrame(rows)


def fairness_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Worst subgroup and largest gap per run, in percent."""
    if summary.empty:
        return summary
    frame = summary.copy()
    for column in list(frame.columns):
        if column.endswith(("accuracy", "gap")) and pd.api.types.is_numeric_dtype(frame[column]):
            frame[column] = frame[column].map(_percent)
            frame = frame.rename(columns={column: f"{column} %"})
    return frame


def subgroup_cells_table(cells: pd.DataFrame) -> pd.DataFrame:
    """One run's subgroup x gender cells: accuracy in percent with its interval."""
    return pd.DataFrame(
        {
            "attribute": cells["attribute"],
            "value": cells["value"],
            "gender": cells["gender"],
            "images": cells["images"],
            "accuracy % [interval]": [
                interval_cell(a, low, high)
                for a, low, high in zip(
                    cells["accuracy"], cells["ci_low"], cells["ci_high"], strict=True
                )
            ],
            "small": cells["small"].map({True: "yes", False: ""}),
        }
    )
