"""The study's metrics, named once: what training logs (val/, test/), what the schema lets a
run monitor, what metrics.json and the analysis hold, and how they are computed from P(male)
(male the positive class), for training and for the analysis' re-computations alike."""

from __future__ import annotations

import torch
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_f1_score,
    binary_precision,
    binary_recall,
)

# Computed at a threshold on P(male), in the order the tables show them.
THRESHOLD_METRICS = {
    "acc": binary_accuracy,
    "precision": binary_precision,
    "recall": binary_recall,
    "f1": binary_f1_score,
}
CLASSIFICATION_METRICS = (*THRESHOLD_METRICS, "auroc")  # metrics.json's test/<name>
LOGGED_METRICS = (*CLASSIFICATION_METRICS, "loss")  # each logged as val/<name> and test/<name>
TEST_METRICS = tuple(f"test/{name}" for name in LOGGED_METRICS)


def binary_metrics(
    probability: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5
) -> dict[str, torch.Tensor]:
    """Accuracy, precision, recall, F1 (male when P(male) > ``threshold``) and AUROC of
    P(male). AUROC is NaN (metrics.json: null) when the images hold one class: it is undefined
    then, where torchmetrics gives 0."""
    values = {
        name: metric(probability, labels, threshold=threshold)
        for name, metric in THRESHOLD_METRICS.items()
    }
    one_class = labels.min() == labels.max()
    values["auroc"] = (
        torch.tensor(float("nan"), device=probability.device)
        if one_class
        else binary_auroc(probability, labels)
    )
    return values
