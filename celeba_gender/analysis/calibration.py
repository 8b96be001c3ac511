"""Is P(male) a probability? Expected calibration error, reliability table, F1-best threshold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.classification import (
    binary_calibration_error,
    binary_precision_recall_curve,
)

from celeba_gender.analysis.statistics import metric_values


def _tensors(predictions: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.tensor(predictions["p_male"].to_numpy(), dtype=torch.float32),
        torch.tensor(predictions["label"].to_numpy(), dtype=torch.long),
    )


def expected_calibration_error(predictions: pd.DataFrame, bins: int = 15) -> float:
    """ECE of P(male) against the fraction of men, equal-width bins (torchmetrics, L1)."""
    preds, target = _tensors(predictions)
    return float(binary_calibration_error(preds, target, n_bins=bins, norm="l1"))


def reliability_table(predictions: pd.DataFrame, bins: int = 15) -> pd.DataFrame:
    """Per equal-width bin of P(male): images, mean P(male), and the fraction that are men
    (the points of a reliability diagram; the diagonal is perfect calibration)."""
    # Bins [a, b) with 1.0 in the last, as torchmetrics' ECE bins them.
    edges = np.linspace(0.0, 1.0, bins + 1)
    edges[-1] = np.nextafter(1.0, 2.0)
    binned = pd.cut(predictions["p_male"], edges, right=False)
    table = predictions.groupby(binned, observed=False).agg(
        images=("label", "size"), mean_p_male=("p_male", "mean"), fraction_male=("label", "mean")
    )
    table.index = pd.Index(
        [f"{i.left:.2f}-{min(i.right, 1.0):.2f}" for i in table.index], name="bin"
    )
    return table.reset_index()


def best_f1_threshold(val_predictions: pd.DataFrame) -> float:
    """The P(male) threshold that maximises F1 on the validation predictions."""
    preds, target = _tensors(val_predictions)
    precision, recall, thresholds = binary_precision_recall_curve(preds, target)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    # The curve's last point (precision 1, recall 0) has no threshold. The curve counts
    # p >= t as male, the metrics p > t: one float32 step below t makes them agree.
    best = thresholds[int(f1[:-1].argmax())]
    return float(torch.nextafter(best, torch.tensor(float("-inf"), dtype=best.dtype)))


def threshold_comparison(
    val_predictions: pd.DataFrame, test_predictions: pd.DataFrame
) -> dict[str, float]:
    """Test accuracy and F1 at 0.5 and at the validation-F1-best threshold."""
    threshold = best_f1_threshold(val_predictions)
    at_half = metric_values(test_predictions["label"], test_predictions["p_male"], 0.5)
    tuned = metric_values(test_predictions["label"], test_predictions["p_male"], threshold)
    return {
        "val_f1_threshold": threshold,
        "acc_at_0.5": at_half["acc"],
        "f1_at_0.5": at_half["f1"],
        "acc_at_val_threshold": tuned["acc"],
        "f1_at_val_threshold": tuned["f1"],
    }
