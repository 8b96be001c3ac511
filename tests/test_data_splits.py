"""Split and rebalancing invariants on the real subset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from celeba_gender.data import DataError, assign_split, build_index
from celeba_gender.data.balance import (
    effective_male_fraction,
    loss_class_weights,
    rebalance_rows,
    sampler_weights,
)


@pytest.fixture(scope="module")
def images(subset_root, cache_dir) -> pd.DataFrame:
    return build_index(subset_root, cache_dir).images


def _parts(part: pd.Series) -> dict[str, pd.Index]:
    return {name: part.index[part == name] for name in ("train", "val", "test")}


def test_identity_split_shares_no_identity(images):
    part = assign_split(images, "identity", seed=7, fractions=(0.7, 0.15, 0.15))
    assert part.notna().all()
    parts = _parts(part)
    identities = {name: set(images.loc[rows, "identity"]) for name, rows in parts.items()}
    assert not identities["train"] & identities["val"]
    assert not identities["train"] & identities["test"]
    assert not identities["val"] & identities["test"]
    for name, fraction in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        assert abs(len(parts[name]) / len(images) - fraction) < 0.02, name
        # Splitting male- and female-majority identities separately keeps the class ratio.
        assert abs(images.loc[parts[name], "male"].mean() - images["male"].mean()) < 0.03, name


def test_every_split_is_deterministic_for_a_seed(images):
    for method in ("identity", "seed_protocol"):
        first = assign_split(images, method, seed=3)
        assert first.equals(assign_split(images, method, seed=3)), method
        assert not first.equals(assign_split(images, method, seed=4)), method


def test_seed_protocol_takes_exactly_n_per_class_and_tests_the_rest(images):
    part = assign_split(images, "seed_protocol", seed=42, train_per_class=1500)
    train = images[part == "train"]
    assert (train["male"] == 1).sum() == 1500
    assert (train["male"] == 0).sum() == 1500
    assert (part == "test").sum() == len(images) - 3000
    assert not (part == "val").any()


def test_seed_protocol_needs_enough_images_of_each_class(images):
    males = int(images["male"].sum())
    with pytest.raises(DataError, match=rf"more than {males} male images .* has {males}\b"):
        assign_split(images, "seed_protocol", train_per_class=males)


def test_official_split_follows_the_partition_file(images):
    part = assign_split(images, "official")
    assert part.map({"train": 0, "val": 1, "test": 2}).equals(images["partition"].rename("part"))


def test_all_is_test(images):
    assert (assign_split(images, "all") == "test").all()


def test_splits_that_need_missing_files_say_so(images):
    no_identity = images.assign(identity=-1)
    with pytest.raises(DataError, match="identity_CelebA.txt"):
        assign_split(no_identity, "identity")
    with pytest.raises(DataError, match="list_eval_partition.txt"):
        assign_split(images.assign(partition=-1), "official")
    with pytest.raises(DataError, match="choose one of identity, seed_protocol"):
        assign_split(images, "random")


def test_undersample_and_oversample_balance_exactly(images):
    labels = images["male"].to_numpy()
    females, males = np.bincount(labels)
    under = rebalance_rows(labels, "undersample", seed=1)
    assert np.bincount(labels[under]).tolist() == [min(females, males)] * 2
    assert len(np.unique(under)) == len(under)
    over = rebalance_rows(labels, "oversample", seed=1)
    assert np.bincount(labels[over]).tolist() == [max(females, males)] * 2
    assert set(range(len(labels))) <= set(over.tolist())
    assert np.array_equal(under, rebalance_rows(labels, "undersample", seed=1))
    assert effective_male_fraction(labels[under], "undersample") == 0.5


def test_weighted_sampler_draws_classes_evenly(images):
    labels = images["male"].to_numpy()
    generator = torch.Generator().manual_seed(0)
    draws = torch.multinomial(
        sampler_weights(labels), 20_000, replacement=True, generator=generator
    )
    assert abs(labels[draws.numpy()].mean() - 0.5) < 0.02


def test_loss_weights_counter_the_class_ratio(images):
    labels = images["male"].to_numpy()
    females, males = np.bincount(labels)
    weights = loss_class_weights(labels)
    assert weights["pos_weight"] == pytest.approx(females / males)
    female_weight, male_weight = weights["class_weights"]
    # Weighted class totals are equal.
    assert female_weight * females == pytest.approx(male_weight * males)
    assert loss_class_weights(np.array([0, 1, 0, 1]))["class_weights"] == [1.0, 1.0]
