"""A cell's search is a function of its trials' results, not of the order they come back in: seeded TPE proposes
in batches of `max_concurrent`, and the plateau stop counts trials in the order they were proposed. Driven here
like Tune drives it, with the results of each batch told in every order."""

from __future__ import annotations

import itertools

import pytest

from harness.config import SearchConfig
from harness.plan import Cell
from harness.search import PlateauSearch, cell_searcher
from harness.space import IntRange, LogUniform, to_tune
from harness.trial import FINAL, METRIC

CELL = Cell("bert", "finetune", "gender", 100, 0, "harmful")
SPACE = to_tune({"lr": LogUniform(low=1e-5, high=1e-2), "steps": IntRange(low=10, high=400)})


def score(config: dict) -> float:
    """A made-up validation accuracy: higher for a learning rate near 1e-3 and more steps."""
    return round(0.9 - abs(config["lr"] - 1e-3) * 50 - (400 - config["steps"]) / 4000, 6)


def drive(order: tuple[int, ...], concurrency: int = 3, patience: int = 4, samples: int = 30) -> list[tuple]:
    """Run a search to its end as Tune would, telling each batch's results in `order` (a permutation of the batch,
    cut to its size): returns each trial's (config, score) as proposed, and why it ended."""
    searcher = cell_searcher(SearchConfig(max_concurrent=concurrency, plateau_patience=patience), CELL)
    searcher.set_search_properties(METRIC, "max", SPACE)
    proposed: list[tuple] = []
    for batch_start in itertools.count(0, concurrency):
        batch = []
        for i in range(batch_start, min(batch_start + concurrency + 1, samples)):
            config = searcher.suggest(f"t{i}")
            if config is None:  # the concurrency limit: the batch is full
                break
            if config == PlateauSearch.FINISHED:
                return proposed + [("finished", len(proposed))]
            batch.append((f"t{i}", config))
        if not batch:
            return proposed + [("all samples", len(proposed))]
        assert len(batch) <= concurrency
        for position in [p for p in order if p < len(batch)]:
            trial_id, config = batch[position]
            searcher.on_trial_complete(trial_id, {METRIC: score(config), FINAL: True})
        proposed += [(tuple(sorted(c.items())), score(c)) for _, c in batch]
    raise AssertionError("unreachable")


def test_the_search_does_not_depend_on_the_order_a_batch_comes_back_in():
    runs = {order: drive(order) for order in itertools.permutations(range(3))}
    first = next(iter(runs.values()))
    assert all(run == first for run in runs.values())
    assert first[-1][0] == "finished"  # the plateau stop ended it, at the same trial every time
    assert len(first) - 1 < 30


def test_a_batch_is_proposed_only_once_the_one_before_has_ended():
    searcher = cell_searcher(SearchConfig(max_concurrent=2, plateau_patience=10), CELL)
    searcher.set_search_properties(METRIC, "max", SPACE)
    a, b = searcher.suggest("a"), searcher.suggest("b")
    assert a and b and searcher.suggest("c") is None
    searcher.on_trial_complete("a", {METRIC: 0.5, FINAL: True})
    assert searcher.suggest("c") is None  # b is still running: TPE has not heard of the whole batch
    searcher.on_trial_complete("b", {METRIC: 0.6, FINAL: True})
    assert searcher.suggest("c")


@pytest.mark.parametrize("result, error", [({METRIC: 0.99, "step": 5}, False), (None, True)])
def test_a_trial_without_a_final_result_is_no_improvement(result, error):
    plateau = PlateauSearch(_Fixed(), patience=2)
    plateau.suggest("a")
    plateau.on_trial_complete("a", {METRIC: 0.5, FINAL: True})
    plateau.suggest("b")
    plateau.on_trial_complete("b", result, error)  # cut short by ASHA (checks only), or failed
    plateau.suggest("c")
    plateau.on_trial_complete("c", {METRIC: 0.4, FINAL: True})
    assert plateau.suggest("d") == PlateauSearch.FINISHED


def test_the_plateau_counts_in_proposal_order_not_completion_order():
    plateau = PlateauSearch(_Fixed(), patience=1)
    for trial_id in "abc":
        plateau.suggest(trial_id)
    plateau.on_trial_complete("c", {METRIC: 0.7, FINAL: True})  # back first, but proposed last
    plateau.on_trial_complete("b", {METRIC: 0.6, FINAL: True})
    assert plateau.suggest("d") != PlateauSearch.FINISHED  # a has not ended: nothing is counted yet
    plateau.on_trial_complete("a", {METRIC: 0.5, FINAL: True})
    # In proposal order each of a, b, c improved on the best: no plateau (in completion order b would not have).
    assert plateau.suggest("e") != PlateauSearch.FINISHED
    state = plateau.get_state()
    restored = PlateauSearch(_Fixed(), patience=1)
    restored.set_state(state)  # what Tune saves for --resume
    assert restored.since_best == 0 and restored.best == 0.7 and restored.proposed == list("abcde")


class _Fixed(PlateauSearch.__mro__[1]):  # a Searcher that always proposes the same configuration
    def __init__(self):
        super().__init__(metric=METRIC, mode="max")

    def suggest(self, trial_id):
        return {"lr": 1e-3}

    def on_trial_complete(self, trial_id, result=None, error=False):
        pass
