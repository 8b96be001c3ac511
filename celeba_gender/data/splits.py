"""Assigning each image to train, val or test; every method is deterministic for a seed.

- ``identity``: by fractions, no celebrity in two parts (faces do not leak into the test set);
- ``seed_protocol``: the reference study's protocol: shuffle with the seed (42 there), the first
  N male and N female images train, everything else tests (it shares identities);
- ``official``: CelebA's own list_eval_partition.txt;
- ``all``: everything is test data, for evaluating a trained model on another copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from celeba_gender.data.errors import DataError
from celeba_gender.data.index import MISSING

SPLIT_METHODS = ("identity", "seed_protocol", "official", "all")
PARTS = ("train", "val", "test")
FRACTION_TOLERANCE = 1e-6  # how far from 1 the split fractions may sum


def check_fractions(fractions: Sequence[float]) -> list[float]:
    """data.split_fractions: 3 fractions (train, val, test) in [0, 1] summing to 1. The one
    statement of the rule: the config schema asks it too."""
    values = list(fractions)
    numbers = all(
        isinstance(f, (int, float)) and not isinstance(f, bool) and 0.0 <= f <= 1.0 for f in values
    )
    if len(values) != 3 or not numbers or abs(sum(values) - 1.0) > FRACTION_TOLERANCE:
        raise DataError(
            f"data.split_fractions must be 3 fractions (train, val, test) in [0, 1] summing to 1 "
            f"(within {FRACTION_TOLERANCE}), got {values}."
        )
    return values


def identity_split(
    images: pd.DataFrame,
    seed: int,
    fractions: Sequence[float],
    unknown_identity_alone: bool = False,
) -> pd.Series:
    """Shuffle identities and fill train, val, test in turn up to the fractions of images.

    Identities are split separately by their majority gender, so every part keeps about the
    dataset's class ratio while no identity is in two parts. An image without identity is
    refused, or with ``unknown_identity_alone`` (sources that often name no person: an image
    folder, a CSV) is a group of its own: such a split is not identity-disjoint.
    """
    missing = images["identity"] == MISSING
    if missing.any() and not unknown_identity_alone:
        missing = images.loc[images["identity"] == MISSING, "file_name"].head(5).tolist()
        raise DataError(
            f"split=identity needs an identity for every image, but "
            f"{int((images['identity'] == MISSING).sum())} have none (e.g. {missing}). Provide "
            "identity_CelebA.txt (or class_identity.txt), or choose data.split=seed_protocol."
        )
    check_fractions(fractions)
    rng = np.random.default_rng(seed)
    # Unknown identities numbered after the known ones: each image its own group.
    first_free = int(images["identity"].max()) + 1
    person = images["identity"].mask(missing, first_free + np.cumsum(missing) - 1)
    per_identity = images.groupby(person)["male"].agg(["size", "mean"])
    part = pd.Series(index=per_identity.index, dtype=object)
    for _, group in per_identity.groupby(per_identity["mean"] >= 0.5):
        order = group.index.to_numpy()[rng.permutation(len(group))]
        counts = group.loc[order, "size"].to_numpy()
        # An identity goes to the part that holds the midpoint of its images in the running
        # total: the parts' image counts then track the fractions closely.
        midpoints = (np.cumsum(counts) - counts / 2) / counts.sum()
        bounds = np.cumsum(fractions)[:-1]
        part.loc[order] = np.array(PARTS)[np.searchsorted(bounds, midpoints, side="right")]
    return person.map(part).rename("part")


def seed_protocol_split(images: pd.DataFrame, seed: int, train_per_class: int) -> pd.Series:
    """The study's split: first ``train_per_class`` of each gender after a seeded shuffle."""
    counts = images["male"].value_counts()
    for label, name in ((1, "male"), (0, "female")):
        have = int(counts.get(label, 0))
        if have <= train_per_class:
            raise DataError(
                f"split=seed_protocol needs more than {train_per_class} {name} images "
                f"({train_per_class} to train, the rest to test) but this copy has {have}. "
                "Lower data.seed_protocol_train_per_class or use split=identity."
            )
    shuffled = images.sample(frac=1.0, random_state=seed)
    train_rows = shuffled.groupby("male", sort=False).head(train_per_class).index
    part = pd.Series("test", index=images.index, name="part", dtype=object)
    part.loc[train_rows] = "train"
    return part


def official_split(images: pd.DataFrame) -> pd.Series:
    if (images["partition"] == MISSING).any():
        raise DataError(
            "split=official needs CelebA's Eval/list_eval_partition.txt with a row for every "
            f"image; {int((images['partition'] == MISSING).sum())} images have none in this "
            "copy. Use split=identity instead."
        )
    return images["partition"].map(dict(enumerate(PARTS))).rename("part")


def assign_split(
    images: pd.DataFrame,
    method: str,
    seed: int = 42,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    train_per_class: int = 1500,
    unknown_identity_alone: bool = False,
) -> pd.Series:
    """The part ('train', 'val' or 'test') of every row of ``images``."""
    if method == "identity":
        return identity_split(images, seed, fractions, unknown_identity_alone)
    if method == "seed_protocol":
        return seed_protocol_split(images, seed, train_per_class)
    if method == "official":
        return official_split(images)
    if method == "all":
        return pd.Series("test", index=images.index, name="part", dtype=object)
    raise DataError(f"Unknown data.split '{method}'; choose one of {', '.join(SPLIT_METHODS)}.")
