"""How sure are we: seed spread, bootstrap intervals, and paired tests on the same test images.

A test set holds several images of one celebrity, and those are not independent: where the
data's identity file names every test image's celebrity, the bootstrap resamples celebrities
(a cluster bootstrap: all images of a drawn celebrity, as often as it is drawn) and McNemar's
test is the clustered one (Durkalski et al., 2003); otherwise images. Either way the report
says which. Metric values are those torchmetrics logs in training (a test checks it).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd
import torch
from scipy import stats

from celeba_gender.analysis.collect import METRICS
from celeba_gender.data.annotations import canonical_name, detect_layout, read_name_value_file
from celeba_gender.data.sources import (
    DEFAULT_CLASS_NAMES,
    detect_source,
    read_source,
    source_identities,
)
from celeba_gender.metrics import binary_metrics

# One configuration: runs that differ only by seed. Runs of different experiments found in
# one folder are never averaged together.
CONFIGURATION = ("experiment", "model", "treatment")
IDENTITIES, IMAGES = "identities", "images"  # what a bootstrap resamples


def correct(predictions: pd.DataFrame, threshold: float = 0.5) -> np.ndarray:
    """Whether each prediction is right under the metrics' rule: male when P(male) > threshold
    (torchmetrics' comparison, so counts here match the logged metrics exactly)."""
    return ((predictions["p_male"] > threshold) == (predictions["label"] == 1)).to_numpy()


def metric_values(labels: np.ndarray, p_male: np.ndarray, threshold: float = 0.5) -> dict:
    """The five test metrics of one set of predictions (male positive), as training logs them."""
    target = torch.tensor(np.asarray(labels), dtype=torch.long)
    preds = torch.tensor(np.asarray(p_male), dtype=torch.float32)
    return {name: float(value) for name, value in binary_metrics(preds, target, threshold).items()}


@cache
def identities_of(
    data_root: str,
    source: str = "auto",
    class_names: tuple[str, ...] = DEFAULT_CLASS_NAMES,
    csv_columns: tuple[tuple[str, str | None], ...] = (),
) -> pd.Series:
    """Person identity by file name (read once per root): a CelebA copy's identity file, an
    image folder's person folders or a CSV's identity column (``source``, ``class_names``,
    ``csv_columns``: the run's data settings); empty when the data names none."""
    kind = detect_source(data_root, source, class_names)
    if kind != "celeba":
        return source_identities(read_source(data_root, kind, class_names, dict(csv_columns)))
    identity_file = detect_layout(data_root).identity_file
    if identity_file is None:
        return pd.Series(dtype="int64")
    return read_name_value_file(identity_file, "identity")


def resampling_units(file_names: pd.Series, identities: pd.Series | None) -> tuple[np.ndarray, str]:
    """Each image's resampling unit as a code 0..K-1, and what the units are: its person
    where ``identities`` names every image's (``"identities"``), else the image itself."""
    if identities is not None and len(identities):
        # A source's names as listed; a CelebA copy's NNNNNN(1).jpg by its annotation name.
        known = file_names.map(identities).fillna(file_names.map(canonical_name).map(identities))
        if known.notna().all():
            return pd.factorize(known)[0], IDENTITIES
    return np.arange(len(file_names)), IMAGES


def resample_weights(
    units: np.ndarray, resamples: int, rng: np.random.Generator, batch: int = 200
) -> Iterator[np.ndarray]:
    """Bootstrap resamples as weights, ``batch`` at a time (batch x images): how often each
    image is drawn when the units are drawn with replacement, as many as there are."""
    count = int(units.max()) + 1
    for start in range(0, resamples, batch):
        size = min(batch, resamples - start)
        drawn = rng.integers(0, count, size=(size, count)) + count * np.arange(size)[:, None]
        times = np.bincount(drawn.ravel(), minlength=size * count).reshape(size, count)
        yield times[:, units]


def weighted_metrics(labels: np.ndarray, p_male: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The five metrics (``METRICS`` order) of each resample given as image weights
    (resamples x images): the metrics of the images repeated that many times. As in
    torchmetrics, precision, recall and F1 are 0 where undefined (no male predicted or
    present). AUROC is the Mann-Whitney form (ties count half), NaN with one class only."""
    male = np.asarray(labels) == 1
    p_male = np.asarray(p_male)
    weights = np.asarray(weights, dtype=float)
    predicted = p_male > 0.5
    tp, fp = weights @ (male & predicted), weights @ (~male & predicted)
    fn, total = weights @ (male & ~predicted), weights.sum(axis=1)
    # Mann-Whitney: for each man, the weight of women scored below him, ties half.
    order = np.argsort(p_male, kind="stable")
    scores, men = p_male[order], male[order]
    new_score = np.r_[True, scores[1:] != scores[:-1]]
    starts = np.flatnonzero(new_score)
    ends = np.r_[starts[1:], len(scores)]
    tie_group = np.cumsum(new_score) - 1
    women_below = np.zeros((len(weights), len(scores) + 1))
    np.cumsum(weights[:, order] * ~men, axis=1, out=women_below[:, 1:])
    below = women_below[:, starts[tie_group]]
    tied = women_below[:, ends[tie_group]] - below
    men_weights = weights[:, order] * men
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = (men_weights * (below + tied / 2)).sum(axis=1) / (
            men_weights.sum(axis=1) * women_below[:, -1]
        )
    return np.stack(
        [
            (total - fp - fn) / total,
            _ratio(tp, tp + fp),
            _ratio(tp, tp + fn),
            _ratio(2 * tp, 2 * tp + fp + fn),
            auroc,
        ]
    )


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (torchmetrics' zero_division)."""
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _percentiles(distribution: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    tail = (1 - confidence) / 2 * 100
    with warnings.catch_warnings():  # a metric undefined in every resample: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(distribution, [tail, 100 - tail], axis=-1)
    return low, high


def bootstrap_intervals(
    predictions: pd.DataFrame,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    units: np.ndarray | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of each test metric, resampling ``units`` (codes from
    ``resampling_units``; default: the images). Resamples where a metric is undefined are left
    out of that metric's interval (AUROC of resamples with one class)."""
    labels, p_male = predictions["label"].to_numpy(), predictions["p_male"].to_numpy()
    units = np.arange(len(labels)) if units is None else units
    rng = np.random.default_rng(seed)
    distribution = np.concatenate(
        [weighted_metrics(labels, p_male, w) for w in resample_weights(units, resamples, rng)],
        axis=1,
    )
    low, high = _percentiles(distribution, confidence)
    return {name: (float(low[i]), float(high[i])) for i, name in enumerate(METRICS)}


@dataclass(frozen=True)
class PairedComparison:
    """McNemar's test and a paired bootstrap of the accuracy difference, A minus B."""

    images: int
    a_only_correct: int
    b_only_correct: int
    accuracy_difference: float
    difference_interval: tuple[float, float]
    p_value: float
    resampled: str  # "identities" (cluster bootstrap, clustered McNemar) or "images"

    def significant(self, level: float) -> bool:
        return self.p_value < level


def compare_paired(
    a: pd.DataFrame,
    b: pd.DataFrame,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    identities: pd.Series | None = None,
) -> PairedComparison:
    """Compare two runs' predictions on the same test images (joined on file name); by
    celebrity where ``identities`` names every image's."""
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
    units, resampled = resampling_units(joined["file_name"], identities)
    a_only, b_only = correct_a & ~correct_b, ~correct_a & correct_b
    rng = np.random.default_rng(seed)
    gain = correct_a.astype(float) - correct_b
    differences = np.concatenate(
        [w @ gain / w.sum(axis=1) for w in resample_weights(units, resamples, rng)]
    )
    low, high = _percentiles(differences, confidence)
    return PairedComparison(
        images=len(joined),
        a_only_correct=int(a_only.sum()),
        b_only_correct=int(b_only.sum()),
        accuracy_difference=float(gain.mean()),
        difference_interval=(float(low), float(high)),
        p_value=mcnemar(a_only, b_only, units if resampled == IDENTITIES else None),
        resampled=resampled,
    )


def mcnemar(a_only: np.ndarray, b_only: np.ndarray, clusters: np.ndarray | None = None) -> float:
    """McNemar's p-value from the images only A or only B got right: exact (each such image a
    fair coin under "equally accurate"), or, with ``clusters``, Durkalski's clustered
    chi-square (per cluster, A-only minus B-only; one image per cluster: plain McNemar)."""
    if clusters is None:
        discordant = int(a_only.sum() + b_only.sum())
        return (
            1.0 if discordant == 0 else float(stats.binomtest(int(a_only.sum()), discordant).pvalue)
        )
    per_cluster = np.bincount(clusters, weights=a_only.astype(float) - b_only)
    spread = float((per_cluster**2).sum())
    return 1.0 if spread == 0 else float(stats.chi2.sf(per_cluster.sum() ** 2 / spread, df=1))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values of a family of tests (reject where below the level):
    the k-th smallest times (m - k + 1), kept non-decreasing, at most 1."""
    p_values = np.asarray(p_values, dtype=float)
    order = np.argsort(p_values)
    scaled = (len(p_values) - np.arange(len(p_values))) * p_values[order]
    adjusted = np.empty_like(p_values)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def seed_summary(runs: pd.DataFrame, keys: tuple[str, ...] = CONFIGURATION) -> pd.DataFrame:
    """One row per configuration (experiment, model, treatment): how many seeds ran, failed or
    are missing, and the mean and standard deviation (ddof=1; NaN with one seed) of every test
    metric, the validation accuracy and the costs over its successful seeds."""
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
    measured = [*METRICS, "val_acc", "params", "train_seconds", "test_images_per_second"]
    measured = [m for m in measured if m in runs]
    if not ok.empty:
        values = ok[[*keys, *measured]].astype({m: float for m in measured})
        by_config = values.groupby(list(keys), sort=False, dropna=False)
        means = by_config.mean().add_suffix("_mean")
        spread = [m for m in (*METRICS, "val_acc") if m in runs]
        stds = by_config[spread].std(ddof=1)
        # A seed whose metric is NaN or missing is left out of that metric's mean, so it is
        # not counted among that metric's seeds either.
        seeds = by_config[spread].count().add_suffix("_seeds")
        summary = summary.join(means).join(stds.add_suffix("_std")).join(seeds)
    return summary.reset_index()


def metric_seeds(configuration: pd.Series, metric: str) -> int:
    """How many of a configuration's successful seeds have a value of ``metric``."""
    count = configuration.get(f"{metric}_seeds")
    return int(configuration["ok"] if count is None or pd.isna(count) else count)


def wilcoxon_paired(differences: pd.Series) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of per-model differences (None below 2 models
    or when every difference is zero)."""
    differences = differences.dropna()
    if len(differences) < 2 or (differences == 0).all():
        return None
    return float(stats.wilcoxon(differences).pvalue)
