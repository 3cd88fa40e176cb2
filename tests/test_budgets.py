"""Nested, stratified, seeded budget samples and deterministic subsamples."""

from __future__ import annotations

import numpy as np
import pytest

from harness.data.budgets import largest_remainder, monotone_allocations, nested_stratified_samples, subsample
from harness.errors import UserError

BUDGETS = [20, 50, 100, 200]


@pytest.fixture
def gender_pool() -> np.ndarray:
    # An unbalanced binary pool, like gender in Bias in Bios (about 54/46), in shuffled order.
    labels = np.array([0] * 540 + [1] * 460)
    return np.random.default_rng(1).permutation(labels)


@pytest.fixture
def profession_pool() -> np.ndarray:
    # 28 classes with very different sizes; one class is absent from the pool.
    counts = [3 + 7 * (k % 9) for k in range(28)]
    counts[5] = 0
    return np.random.default_rng(2).permutation(np.repeat(np.arange(28), counts))


@pytest.mark.parametrize("pool", ["gender_pool", "profession_pool"])
def test_nested_stratified_deterministic(pool: str, request: pytest.FixtureRequest) -> None:
    labels = request.getfixturevalue(pool)
    k = int(labels.max()) + 1
    samples = nested_stratified_samples(labels, BUDGETS, seed=0, num_classes=k)
    counts = np.bincount(labels, minlength=k)
    assert list(samples) == BUDGETS
    for b, idx in samples.items():
        assert len(idx) == b == len(set(idx.tolist()))
        assert np.all(np.diff(idx) > 0) and idx.dtype == np.int64
        drawn = np.bincount(labels[idx], minlength=k)
        np.testing.assert_array_equal(drawn, monotone_allocations(counts, [b])[b])
        # Every class within one example of its exact quota, as with plain largest remainder.
        assert np.all(np.abs(drawn - b * counts / counts.sum()) < 1)
        if k == 2:  # with two classes largest remainder is already monotone
            np.testing.assert_array_equal(drawn, largest_remainder(counts, b))
    for small, large in zip(BUDGETS, BUDGETS[1:]):
        assert set(samples[small].tolist()) <= set(samples[large].tolist())
    again = nested_stratified_samples(labels, BUDGETS, seed=0, num_classes=k)
    assert all(np.array_equal(samples[b], again[b]) for b in BUDGETS)


def test_gender_allocation_matches_pool(gender_pool: np.ndarray) -> None:
    samples = nested_stratified_samples(gender_pool, [20, 50], seed=3, num_classes=2)
    assert np.bincount(gender_pool[samples[20]]).tolist() == [11, 9]  # 10.8 / 9.2
    assert np.bincount(gender_pool[samples[50]]).tolist() == [27, 23]


def test_seeds_differ(gender_pool: np.ndarray) -> None:
    a = nested_stratified_samples(gender_pool, BUDGETS, seed=0, num_classes=2)
    b = nested_stratified_samples(gender_pool, BUDGETS, seed=1, num_classes=2)
    assert all(not np.array_equal(a[k], b[k]) for k in BUDGETS)
    # Same allocation per class regardless of seed.
    assert all(np.array_equal(np.bincount(gender_pool[a[k]]), np.bincount(gender_pool[b[k]])) for k in BUDGETS)


def test_independent_of_other_budgets(profession_pool: np.ndarray) -> None:
    """Adding a budget to a config must not change the samples of the others."""
    full = nested_stratified_samples(profession_pool, BUDGETS, seed=4, num_classes=28)
    alone = nested_stratified_samples(profession_pool, [100], seed=4, num_classes=28)
    assert np.array_equal(full[100], alone[100])


def test_monotone_where_largest_remainder_is_not() -> None:
    # The Alabama paradox: plain largest remainder gives class 2 one example at budget 3 and none at budget 4.
    counts = np.array([6, 6, 2])
    assert largest_remainder(counts, 3).tolist() == [1, 1, 1]
    assert largest_remainder(counts, 4).tolist() == [2, 2, 0]
    alloc = monotone_allocations(counts, range(1, 15))
    for b in range(1, 15):
        assert alloc[b].sum() == b
        if b > 1:
            assert np.all(alloc[b] >= alloc[b - 1])
    labels = np.repeat(np.arange(3), counts)
    samples = nested_stratified_samples(labels, [3, 4], seed=0, num_classes=3)
    assert set(samples[3].tolist()) <= set(samples[4].tolist())


def test_monotone_allocation_stays_within_quota(profession_pool: np.ndarray) -> None:
    counts = np.bincount(profession_pool, minlength=28)
    alloc = monotone_allocations(counts, range(1, 400))
    for b in range(1, 400):
        assert alloc[b].sum() == b
        quota = b * counts / counts.sum()
        assert np.all(np.floor(quota) <= alloc[b]) and np.all(alloc[b] <= np.ceil(quota)), b
        assert b == 1 or np.all(alloc[b] >= alloc[b - 1])
    assert alloc[399][5] == 0  # the absent class never gets an example


def test_whole_pool(gender_pool: np.ndarray) -> None:
    samples = nested_stratified_samples(gender_pool, [len(gender_pool)], seed=0, num_classes=2)
    assert samples[len(gender_pool)].tolist() == list(range(len(gender_pool)))


def test_errors(gender_pool: np.ndarray) -> None:
    with pytest.raises(UserError, match=r"budget 1001 exceeds the training pool of 1000 examples"):
        nested_stratified_samples(gender_pool, [20, 1001], seed=0, num_classes=2)
    with pytest.raises(UserError, match=r"budget 0: expected a positive number"):
        nested_stratified_samples(gender_pool, [0], seed=0, num_classes=2)
    with pytest.raises(UserError, match=r"value 2 is outside \[0, 2\)"):
        nested_stratified_samples(np.array([0, 1, 2]), [2], seed=0, num_classes=2)
    assert nested_stratified_samples(gender_pool, [], seed=0, num_classes=2) == {}


def test_negative_and_large_seeds(gender_pool: np.ndarray) -> None:
    a = nested_stratified_samples(gender_pool, [20], seed=-1, num_classes=2)
    b = nested_stratified_samples(gender_pool, [20], seed=2**40, num_classes=2)
    assert len(a[20]) == len(b[20]) == 20


def test_subsample() -> None:
    idx = subsample(1000, 100, seed=0)
    assert len(idx) == 100 == len(set(idx.tolist())) and np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, subsample(1000, 100, seed=0))
    assert not np.array_equal(idx, subsample(1000, 100, seed=1))
    assert set(subsample(1000, 50, seed=0).tolist()) <= set(idx.tolist())  # nested in size
    assert subsample(30, 100, seed=0).tolist() == list(range(30))
    assert subsample(30, 30, seed=5).tolist() == list(range(30))
