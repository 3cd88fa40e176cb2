"""Which training examples an attacker gets at each harmful-data budget.

For one seed, the samples for all budgets are nested (the 20-example sample is inside the 50-example one) and
stratified by label. Nesting makes the curve over budgets a curve over *more of the same data*, not over different
draws; stratification keeps a 20-example sample from missing a class by bad luck.

Allocation: proportional to the pool's class counts, as close to largest remainder (Hamilton) as nesting allows.
Plain largest remainder can give a class fewer examples at a larger budget (the Alabama paradox, frequent with many
small classes), which would break nesting. So the allocation grows one example at a time, b = 1, 2, ...: the example
goes to the class furthest below its exact quota b * p_k, among the classes that pass Still's eligibility test
(Still 1979, "A class of new methods for congressional apportionment"), which guarantees that every class stays
within quota (floor(b * p_k) <= n_k <= ceil(b * p_k)) at every budget. With two classes this is exactly largest
remainder; with many, it equals largest remainder at most budgets and never strays beyond quota. Because the
allocation for a budget is defined through every smaller budget, it does not depend on which other budgets a
config lists, nor on the seed (only which examples fill it does).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence

import numpy as np

from harness.errors import UserError

log = logging.getLogger(__name__)

_MASK64 = (1 << 64) - 1
# Separate random streams per purpose, so that a seed shared with model initialisation or another sampler does not
# produce correlated draws.
_TAG_BUDGETS = 0xB0D6E7
_TAG_SUBSAMPLE = 0x5AB5A3


def _rng(seed: int, tag: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed & _MASK64, tag]))


def largest_remainder(counts: np.ndarray, budget: int) -> np.ndarray:
    """Hamilton allocation of `budget` over classes with pool sizes `counts` (exact integer arithmetic)."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    scaled = budget * counts
    alloc = scaled // total
    short = budget - int(alloc.sum())
    if short:
        # Largest fractional part first; ties go to the larger class, then the lower class index, so the result
        # never depends on sort stability.
        order = np.lexsort((np.arange(len(counts)), -counts, -(scaled % total)))
        alloc[order[:short]] += 1
    return alloc


def monotone_allocations(counts: np.ndarray, budgets: Iterable[int]) -> dict[int, np.ndarray]:
    """Per budget, examples per class: within quota, never decreasing in the budget (see module notes)."""
    counts = np.asarray(counts, dtype=np.int64)
    wanted = sorted(set(budgets))
    if not wanted:
        return {}
    table = _allocation_table(tuple(int(c) for c in counts), wanted[-1])
    return {b: table[b - 1].copy() for b in wanted}


@functools.lru_cache(maxsize=32)
def _allocation_table(counts_t: tuple[int, ...], largest: int) -> np.ndarray:
    """Row b-1: the allocation for budget b, for b = 1..largest. Cached: every seed and task cell reuses it."""
    counts = np.array(counts_t, dtype=np.int64)
    total = int(counts.sum())
    k = len(counts)
    if largest > total:
        raise ValueError(f"budget {largest} exceeds the pool of {total}")
    table = np.zeros((largest, k), dtype=np.int64)
    alloc = np.zeros(k, dtype=np.int64)
    index = np.arange(k)
    for b in range(1, largest + 1):
        # Candidates by how far they are below their exact quota (scaled by `total` to stay in integers), ties to
        # the larger class, then the lower index; the first one whose extra example keeps every quota reachable wins.
        deficit = b * counts - alloc * total
        chosen = -1
        for i in np.lexsort((index, -counts, -deficit)):
            if counts[i] == 0 or alloc[i] >= counts[i]:
                continue
            if chosen < 0:
                chosen = int(i)  # fallback, should Still's test reject everyone
            if _still_eligible(counts, total, alloc, int(i), b):
                chosen = int(i)
                break
        alloc[chosen] += 1
        table[b - 1] = alloc
    return table


def _still_eligible(counts: np.ndarray, total: int, alloc: np.ndarray, i: int, b: int) -> bool:
    """Still's test: class i may take the b-th example if that stays within upper quota now and leaves every lower
    quota reachable at each later budget until i's own lower quota catches up with its new count."""
    new_i = int(alloc[i]) + 1
    if new_i * total > -(-b * int(counts[i]) // total) * total:  # above ceil(b * p_i)
        return False
    horizon = max(b, -(-new_i * total // int(counts[i])))
    sizes = np.arange(b, horizon + 1, dtype=np.int64)
    lower = sizes[:, None] * counts[None, :] // total
    after = alloc.copy()
    after[i] = new_i
    return bool(np.all(np.maximum(lower, after[None, :]).sum(axis=1) <= sizes))


def nested_stratified_samples(
    labels: np.ndarray, budgets: Sequence[int], seed: int, num_classes: int, pool: str = "training pool"
) -> dict[int, np.ndarray]:
    """Sorted indices into the pool (`labels`, the attacker's pool in an experiment) for each budget: stratified by
    label, nested, deterministic per seed. `pool` names the pool in error messages."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if len(budgets) == 0:
        return {}
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels.min() if labels.min() < 0 else labels.max()
        raise UserError(f"{pool} labels: value {bad} is outside [0, {num_classes})")
    size = labels.size
    for b in budgets:
        if b <= 0:
            raise UserError(f"budget {b}: expected a positive number of examples")
        if b > size:
            raise UserError(f"budget {b} exceeds the {pool} of {size} examples")
    counts = np.bincount(labels, minlength=num_classes).astype(np.int64)
    allocations = monotone_allocations(counts, budgets)
    for b in sorted(set(budgets)):
        over = np.flatnonzero(allocations[b] > counts)
        if over.size:
            k = int(over[0])
            raise UserError(
                f"budget {b}: the stratified allocation asks class {k} for {int(allocations[b][k])} examples but "
                f"the {pool} has only {int(counts[k])} (pool class counts {counts.tolist()})"
            )
    rng = _rng(seed, _TAG_BUDGETS)
    # One permutation per class, drawn for every class in class order, so each class's order depends only on the seed
    # and the pool; every budget takes a prefix of each, which makes the samples nested.
    perms = [rng.permutation(np.flatnonzero(labels == k)) for k in range(num_classes)]
    samples: dict[int, np.ndarray] = {}
    for b in budgets:
        parts = [perms[k][: allocations[b][k]] for k in range(num_classes)]
        samples[b] = np.sort(np.concatenate(parts)).astype(np.int64)
    log.debug("budget samples for seed %d: %s", seed, {b: allocations[b].tolist() for b in budgets})
    return samples


def subsample(n: int, size: int, seed: int) -> np.ndarray:
    """A deterministic sorted subset of ``range(n)`` of `size` rows (all rows when ``size >= n``); nested in size."""
    if n < 0 or size <= 0:
        raise ValueError(f"subsample needs n >= 0 and size > 0, got n={n}, size={size}")
    if size >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(_rng(seed, _TAG_SUBSAMPLE).permutation(n)[:size]).astype(np.int64)
