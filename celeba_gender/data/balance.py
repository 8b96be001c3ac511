"""Class rebalancing of the training part (about 40% of CelebA images are male).

- ``none``: train on the images as they are;
- ``undersample``: keep a seeded random subset of the majority class as large as the minority
  (what the reference study did, 1,500 + 1,500);
- ``oversample``: repeat seeded random minority images until the classes are equal;
- ``weighted_sampler``: draw each epoch with replacement, each class equally likely;
- ``loss_weights``: keep the images, weight the loss instead (``loss_class_weights``).
"""

from __future__ import annotations

import numpy as np
import torch

from celeba_gender.data.errors import DataError

BALANCE_METHODS = ("none", "undersample", "oversample", "weighted_sampler", "loss_weights")


def _class_rows(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = [np.flatnonzero(labels == label) for label in (0, 1)]
    if min(len(r) for r in rows) == 0:
        raise DataError("The training part holds only one class; rebalancing is impossible.")
    return rows[0], rows[1]


def rebalance_rows(labels: np.ndarray, method: str, seed: int) -> np.ndarray:
    """Positions into ``labels`` that make up one epoch's (fixed) training set."""
    if method not in BALANCE_METHODS:
        raise DataError(
            f"Unknown data.balance '{method}'; choose one of {', '.join(BALANCE_METHODS)}."
        )
    everything = np.arange(len(labels))
    if method in ("none", "weighted_sampler", "loss_weights"):
        return everything
    rng = np.random.default_rng(seed)
    female, male = _class_rows(labels)
    minority, majority = sorted((female, male), key=len)
    if method == "undersample":
        kept = rng.choice(majority, size=len(minority), replace=False)
        return np.sort(np.concatenate([minority, kept]))
    extra = rng.choice(minority, size=len(majority) - len(minority), replace=True)
    return np.sort(np.concatenate([everything, extra]))


def sampler_weights(labels: np.ndarray) -> torch.Tensor:
    """Per-image weights that make each class equally likely under WeightedRandomSampler."""
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    _class_rows(labels)
    return torch.as_tensor(1.0 / counts[labels], dtype=torch.double)


def loss_class_weights(labels: np.ndarray) -> dict[str, list[float] | float]:
    """Weights for the loss heads, from training labels (male = positive class = 1).

    ``pos_weight`` for BCEWithLogitsLoss (negatives / positives), ``class_weights`` for
    CrossEntropyLoss (N / (2 * count), so a balanced set gets [1, 1]).
    """
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    _class_rows(labels)
    return {
        "pos_weight": float(counts[0] / counts[1]),
        "class_weights": (counts.sum() / (2 * counts)).tolist(),
    }


def effective_male_fraction(labels: np.ndarray, method: str) -> float:
    """The share of male images the model effectively learns from in one epoch."""
    if method in ("weighted_sampler", "loss_weights"):
        return 0.5  # in expectation (sampler) / in loss weight (loss weights)
    return float(np.mean(labels))
