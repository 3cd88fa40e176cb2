"""From trained defenses to their cells' search jobs, and from a searched cell back to its rows.

A defense's weights, frozen features and provenance are loaded once, when its first cell is drawn (`CellJobs`), and
let go of once its last cell is; each cell's payload (weights, budget rows, features, attack) goes into the object
store once. A searched cell's trials, curves and row are written together (`record_cell`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.config import ExperimentConfig
from harness.plan import Cell

if TYPE_CHECKING:
    from harness.data.prepare import PreparedData
    from harness.flight import CellJob
    from harness.results import CellOrigin, Provenance


@dataclass(frozen=True)
class Defended:
    """One trained defense as its cells use it: the weights, their frozen features, and what every row records."""

    state: dict[str, Any]
    features: Any  # (cell, budget rows) -> Features, or None for attacks that need none
    origin: CellOrigin
    provenance: Provenance



class CellJobs:
    """Each unfinished cell of `todo`, ready to search, drawn as its defense's training ends (`harness.trainings`):
    a defense's weights and features are loaded when its first cell is drawn, and let go of (here and in the object
    store) once its last one is. `take` never waits: the cells in flight go on while the other trainings run."""

    def __init__(self, cfg, todo, trainings, prepared, attacks, stamp, pool):
        self._cfg, self._todo, self._trainings = cfg, list(todo), trainings
        self._prepared, self._attacks, self._stamp, self._pool = prepared, attacks, stamp, pool
        self._cells: list[Cell] = []  # the current defense's cells not yet drawn
        self._defended: Defended | None = None
        self._workers_seen = False

    @property
    def exhausted(self) -> bool:
        return not self._cells and self._trainings.all_ended and not self._trainings.ended_waiting

    def wait(self, timeout: float) -> None:
        """Until another training may have ended, at most `timeout` seconds."""
        self._trainings.poll(timeout)

    def take(self) -> CellJob | None:
        """The next cell ready to search, or None if none is yet (or any more: see `exhausted`)."""
        if not self._workers_seen:
            # Not before a worker runs: a cell's features are computed on one, and the driver would wait for it
            # instead of following the trainings still running.
            self._trainings.poll()
            self._workers_seen = self._pool.any_running()
            if not self._workers_seen:
                return None
        if not self._cells:
            self._trainings.poll()
            if self._next_defense() is None:
                return None
        return self._job(self._cells.pop(0))

    def _next_defense(self) -> Defended | None:
        """The current defense while it has cells left, else the next one whose training has ended."""
        while not self._cells:
            self._defended = None  # its last cell is drawn: let its weights go before the next one's load
            ended = self._trainings.take_ended()
            if ended is None:
                return None
            (defense_name, defense_seed), trained = ended
            seed_for = self._cfg.defense_training.seed_for
            self._cells = [c for c in self._todo if c.defense == defense_name and seed_for(c.seed) == defense_seed]
            if self._cells:
                self._defended = _defended(self._cfg, defense_name, defense_seed, trained, self._prepared,
                                           self._attacks, self._stamp, self._pool)
        return self._defended

    def _job(self, cell: Cell) -> CellJob:
        import ray

        from harness.flight import CellJob
        from harness.plugins import CellData, desired_rows
        from harness.workers import CellPayload

        cfg, prepared, defended = self._cfg, self._prepared, self._defended
        assert defended is not None
        rows = prepared.budget_rows[(cell.task, cell.seed)][cell.budget]
        attack = self._attacks[cell.attack]
        data = CellData(prepared.attack_pool.subset(rows), prepared.val, prepared.test, cell.task,
                        cfg.data.labels[cell.task])
        if attack.needs_benign() and cell.task_role == "harmful":
            # The attacker's own desired-task rows: its pool (never the defense's), all of it, desired labels.
            desired = cfg.tasks.desired
            data = dataclasses.replace(data, benign=desired_rows(prepared.attack_pool, desired),
                                       benign_label=desired, benign_num_labels=cfg.data.labels[desired])
        features = defended.features(cell, rows) if attack.needs_features() else None
        payload = CellPayload(cfg.model, defended.state, data, features, attack, cfg.search.eval_every,
                              cfg.search.resources_per_trial.cpu)
        return CellJob(cell, [ray.put(payload)], attack, defended)


def _defended(cfg, defense_name, defense_seed, trained, prepared, attacks, stamp, pool) -> Defended:
    """A trained defense, ready for its cells: its weights on the driver, its features from the pool."""
    import ray

    from harness.defend import make_defense
    from harness.results import CellOrigin

    spec = next(d for d in cfg.defenses if d.cell_name == defense_name)
    origin = CellOrigin(
        defense_seed=defense_seed,
        defense_seeding=cfg.defense_training.seeding,
        defense_variant=make_defense(spec, "config").variant(),
        budget_pool=prepared.pools["attack"].label,
        validation_pool=prepared.pools["validation"].label,
        test_pool=prepared.pools["test"].label,
        validation_rows=len(prepared.val),
    )
    features = _feature_cache(cfg, trained.state, attacks, prepared, pool)
    provenance = dataclasses.replace(stamp, defense_fingerprint=trained.weights.fingerprint)
    return Defended(ray.get(trained.state), features, origin, provenance)


def record_cell(run_dir: Path, cell: Cell, defended: Defended, outcome: tuple, storage: str) -> str:
    """Write a searched cell's trials, curves and row (the cell is finished once its row exists); its status."""
    from harness.results import CellKey, CellRow, CurveRow, TrialRow, write_cell, write_cells_table
    from harness.search import discard_search

    trials, result, curves, ran_on = outcome
    key = CellKey(cell.defense, cell.attack, cell.task, cell.budget, cell.seed, cell.cell_id, cell.task_role)
    stamp = defended.provenance
    trial_rows = [TrialRow(key, t, defended.origin, stamp.ran_on([ran_on[t.trial_id]] if t.trial_id in ran_on else []))
                  for t in trials]
    write_cell(run_dir, trial_rows, CellRow(key, result, defended.origin, stamp.ran_on(list(ran_on.values()))),
               [CurveRow(key, p) for p in curves])
    discard_search(storage, cell)  # recorded: nothing left to resume (a failed cell starts afresh)
    # The cells table stays current while a run goes on; the curves table, which grows with every check of every
    # trial, is rebuilt once at the end (`write_run_tables`), not after each cell.
    write_cells_table(run_dir)
    return result.status


def _feature_cache(cfg: ExperimentConfig, state: Any, attacks: dict[str, Any], prepared: PreparedData, pool: Any):
    """Frozen features of the defended encoder (`state`: its object reference), computed by a trial worker, on its
    device at its precision: val/test once per defended model, budget rows once per (task, seed), on first use."""
    if not any(a.needs_features() for a in attacks.values()):
        return lambda cell, rows: None
    from harness.training import Features

    held_out: list[Any] = []  # [val, test], once computed
    train_cache: dict[tuple[str, int], tuple[np.ndarray, Any]] = {}

    def features(cell: Cell, rows: np.ndarray) -> Features:
        if not held_out:
            splits = [prepared.val] if prepared.test is prepared.val else [prepared.val, prepared.test]
            encoded = pool.encode(cfg.model, state, splits)
            held_out.extend([encoded[0], encoded[-1]])
        key = (cell.task, cell.seed)
        if key not in train_cache:
            largest = prepared.budget_rows[key][max(prepared.budget_rows[key])]
            [feats] = pool.encode(cfg.model, state, [prepared.attack_pool.subset(largest)])
            train_cache[key] = (largest, feats)
        largest, feats = train_cache[key]
        position = {int(r): i for i, r in enumerate(largest)}
        return Features(feats[[position[int(r)] for r in rows]], *held_out)

    return features
