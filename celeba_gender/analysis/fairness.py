"""Who does the model fail? Accuracy per CelebA attribute subgroup x gender, with intervals.

Within one gender, accuracy is that gender's true-positive rate (men: recall of "male";
women: recall of "female"), so each subgroup x gender cell reads as a TPR. Small cells are
flagged, not hidden: their Wilson intervals say how little they show.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pandas as pd
from scipy import stats

from celeba_gender.analysis.statistics import correct
from celeba_gender.data import DataError
from celeba_gender.data.annotations import canonical_name, detect_layout, read_attributes
from celeba_gender.data.sources import DEFAULT_CLASS_NAMES, detect_source, source_image_dir

GENDERS = {0: "female", 1: "male"}


@cache
def attributes_of(
    data_root: str, source: str = "auto", class_names: tuple[str, ...] = DEFAULT_CLASS_NAMES
) -> pd.DataFrame:
    """The 0/1 attribute table of a CelebA copy, indexed by file name (read once per root)."""
    kind = detect_source(data_root, source, class_names)
    if kind != "celeba":
        raise DataError(
            f"{data_root} is {'a CSV' if kind == 'csv' else 'an image folder'} source "
            f"(data.source={kind}): it has labels but no CelebA attributes to slice by; the "
            "slices need a run tested on a CelebA copy."
        )
    return read_attributes(detect_layout(data_root).attributes_file)[0]


def subgroup_table(
    predictions: pd.DataFrame,
    attributes: pd.DataFrame,
    names: list[str],
    min_group_size: int = 30,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """One row per attribute x value (has / lacks) x gender: images, correct, accuracy (= TPR of
    that gender), Wilson interval, and ``small`` when fewer than ``min_group_size`` images."""
    unknown = [name for name in names if name not in attributes.columns]
    if unknown:
        raise DataError(
            f"Unknown CelebA attributes {unknown}; the attribute file has: "
            f"{', '.join(attributes.columns)}"
        )
    keys = predictions["file_name"].map(canonical_name)
    missing = ~keys.isin(attributes.index)
    if missing.any():
        raise DataError(
            f"{int(missing.sum())} test images (e.g. {keys[missing].iloc[0]}) have no row in the "
            "attribute file: point --data-root at the copy the runs were tested on."
        )
    frame = attributes.loc[keys, names].reset_index(drop=True)
    frame["gender"] = predictions["label"].map(GENDERS).to_numpy()
    frame["correct"] = correct(predictions)
    rows = []
    for name in names:
        for (value, gender), cell in frame.groupby([name, "gender"]):
            images, right = len(cell), int(cell["correct"].sum())
            interval = stats.binomtest(right, images).proportion_ci(confidence, "wilson")
            rows.append(
                {
                    "attribute": name,
                    "value": "has" if value == 1 else "lacks",
                    "gender": gender,
                    "images": images,
                    "correct": right,
                    "accuracy": right / images,
                    "ci_low": interval.low,
                    "ci_high": interval.high,
                    "small": images < min_group_size,
                }
            )
    return pd.DataFrame(rows)


def fairness_summary(table: pd.DataFrame) -> dict:
    """Worst cell (among cells that are not small, and among all) and the largest gap: for one
    attribute and gender, the difference in accuracy between having and lacking it."""
    if table.empty:
        return {}
    sized = table[~table["small"]]
    worst_all = table.loc[table["accuracy"].idxmin()]
    summary = {
        "worst_group_all": _cell_name(worst_all),
        "worst_group_all_accuracy": float(worst_all["accuracy"]),
        "worst_group_all_images": int(worst_all["images"]),
    }
    if not sized.empty:
        worst = sized.loc[sized["accuracy"].idxmin()]
        summary.update(
            worst_group=_cell_name(worst),
            worst_group_accuracy=float(worst["accuracy"]),
            worst_group_images=int(worst["images"]),
        )
    pivot = table.pivot_table(index=["attribute", "gender"], columns="value", values="accuracy")
    if {"has", "lacks"} <= set(pivot.columns):
        gaps = (pivot["has"] - pivot["lacks"]).dropna()
        if not gaps.empty:
            attribute, gender = gaps.abs().idxmax()
            summary.update(
                largest_gap=float(gaps[(attribute, gender)]),
                largest_gap_attribute=attribute,
                largest_gap_gender=gender,
            )
    return summary


def _cell_name(row: pd.Series) -> str:
    return f"{row['gender']} {row['value']} {row['attribute']}"


def image_path(data_root: str | Path, file_name: str) -> Path:
    """Where a test image lives in its copy (for the worst-images grid)."""
    return source_image_dir(data_root) / file_name
