"""How sure are we: seed spread, bootstrap intervals, and paired tests on the same test images.

Metrics are torchmetrics' (the ones training logs), so a bootstrap interval is an interval of
exactly the number in metrics.json. Resampling and tests are scipy's.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_f1_score,
    binary_precision,
    binary_recall,
)

from celeba_gender.analysis.collect import METRICS


def correct(predictions: pd.DataFrame, threshold: float = 0.5) -> np.ndarray:
    """Whether each prediction is right under the metrics' rule: male when P(male) > threshold
    (torchmetrics' comparison, so counts here match the logged metrics exactly)."""
    return ((predictions["p_male"] > threshold) == (predictions["label"] == 1)).to_numpy()


_SAMPLEWISE = {
    "acc": binary_accuracy,
    "precision": binary_precision,
    "recall": binary_recall,
    "f1": binary_f1_score,
}


def metric_values(labels: np.ndarray, p_male: np.ndarray, threshold: float = 0.5) -> dict:
    """The five test metrics of one set of predictions (male positive), as training logs them."""
    target = torch.tensor(np.asarray(labels), dtype=torch.long)
    preds = torch.tensor(np.asarray(p_male), dtype=torch.float32)
    values = {
        name: float(fn(preds, target, threshold=threshold)) for name, fn in _SAMPLEWISE.items()
    }
    values["auroc"] = float(binary_auroc(preds, target))
    return values


def _resampled_metrics(labels: np.ndarray, p_male: np.ndarray, axis: int = -1) -> np.ndarray:
    """The metrics of every resample at once (a scipy-bootstrap statistic): shape (5, ...).

    Accuracy, precision, recall and F1 are torchmetrics' per-row ("samplewise") forms. AUROC is
    the Mann-Whitney form from tied ranks, exact and per row (torchmetrics has no per-row AUROC;
    a test checks the two agree)."""
    target = torch.tensor(np.moveaxis(labels, axis, -1), dtype=torch.long)
    preds = torch.tensor(np.moveaxis(p_male, axis, -1), dtype=torch.float32)
    batch_shape = target.shape[:-1]
    target, preds = target.reshape(-1, target.shape[-1]), preds.reshape(-1, preds.shape[-1])
    rows = [
        fn(preds, target, multidim_average="samplewise", validate_args=False).reshape(-1).numpy()
        for fn in _SAMPLEWISE.values()
    ]
    positives = target.numpy() == 1
    ranks = stats.rankdata(preds.numpy(), axis=-1)
    n_pos, n_neg = positives.sum(-1), (~positives).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):  # one-class resamples: NaN
        auroc = ((ranks * positives).sum(-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    rows.append(auroc)
    return np.stack(rows).reshape(len(rows), *batch_shape)


def bootstrap_intervals(
    predictions: pd.DataFrame,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of each test metric, resampling test images (label and
    prediction together). Resamples where a metric is undefined (one class only: AUROC,
    precision with no male prediction) are left out of that metric's interval."""
    labels = predictions["label"].to_numpy()
    p_male = predictions["p_male"].to_numpy()
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():  # NaN resamples of small test sets
        warnings.simplefilter("ignore")
        distribution = stats.bootstrap(
            (labels, p_male),
            _resampled_metrics,
            paired=True,
            vectorized=True,
            n_resamples=resamples,
            batch=200,  # bounds memory: 200 resamples x test images at a time
            method="percentile",
            rng=rng,
        ).bootstrap_distribution
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(distribution, [tail, 100 - tail], axis=-1)
    return {name: (float(low[i]), float(high[i])) for i, name in enumerate(METRICS)}


@dataclass(frozen=True)
class PairedComparison:
    """McNemar's exact test and a paired bootstrap of the accuracy difference, A minus B."""

    images: int
    a_only_correct: int
    b_only_correct: int
    accuracy_difference: float
    difference_interval: tuple[float, float]
    p_value: float

    def significant(self, level: float) -> bool:
        return self.p_value < level


def compare_paired(
    a: pd.DataFrame,
    b: pd.DataFrame,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Compare two runs' predictions on the same test images (joined on file name)."""
    joined = a.merge(b, on="file_name", suffixes=("_a", "_b"), validate="one_to_one")
    if len(joined) != len(a) or len(joined) != len(b):
        raise ValueError(
            f"The two runs were tested on different images ({len(a)} and {len(b)}, "
            f"{len(joined)} shared): a paired test needs the same test set."
        )
    if not (joined["label_a"] == joined["label_b"]).all():
        raise ValueError("The two runs disagree on the labels of the same files.")
    correct_a = correct(joined.rename(columns={"p_male_a": "p_male", "label_a": "label"}))
    correct_b = correct(joined.rename(columns={"p_male_b": "p_male", "label_b": "label"}))
    a_only, b_only = int((correct_a & ~correct_b).sum()), int((~correct_a & correct_b).sum())
    # Exact McNemar: under "equally accurate", each discordant image is a fair coin.
    p_value = 1.0 if a_only + b_only == 0 else stats.binomtest(a_only, a_only + b_only, 0.5).pvalue
    difference = stats.bootstrap(
        (correct_a.astype(float), correct_b.astype(float)),
        lambda x, y, axis=-1: x.mean(axis=axis) - y.mean(axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return PairedComparison(
        images=len(joined),
        a_only_correct=a_only,
        b_only_correct=b_only,
        accuracy_difference=float(correct_a.mean() - correct_b.mean()),
        difference_interval=(float(difference.low), float(difference.high)),
        p_value=float(p_value),
    )


def seed_summary(
    runs: pd.DataFrame, keys: tuple[str, ...] = ("model", "treatment")
) -> pd.DataFrame:
    """One row per configuration: how many seeds ran, failed or are missing, and the mean and
    standard deviation (ddof=1; NaN with one seed) of every test metric and cost over its
    successful seeds."""
    if runs.empty:
        return pd.DataFrame()
    grouped = runs.groupby(list(keys), sort=False, dropna=False)
    summary = grouped.agg(
        family=("family", "first"),
        depth=("depth", "first"),
        runs=("status", "size"),
        ok=("status", lambda s: int((s == "ok").sum())),
        failed=("status", lambda s: int((s == "failed").sum())),
        missing=("status", lambda s: int((s == "missing").sum())),
    )
    ok = runs[runs["status"] == "ok"]
    measured = [*METRICS, "params", "train_seconds", "test_images_per_second"]
    if not ok.empty:
        values = ok[[*keys, *measured]].astype({m: float for m in measured})
        by_config = values.groupby(list(keys), sort=False, dropna=False)
        means = by_config.mean().add_suffix("_mean")
        stds = by_config[list(METRICS)].std(ddof=1).add_suffix("_std")
        summary = summary.join(means).join(stds)
    return summary.reset_index()


def wilcoxon_paired(differences: pd.Series) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of per-model differences (None below 2 models
    or when every difference is zero)."""
    differences = differences.dropna()
    if len(differences) < 2 or (differences == 0).all():
        return None
    return float(stats.wilcoxon(differences).pvalue)
