"""Attacker compute curves on the leaderboard: rerun test accuracy against attacker steps, per group, and the steps
(and examples seen) the attacker needs to reach the data-cost threshold."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from harness.report.groups import Group, is_ok
from harness.report.stats import first_crossing, mean_curve
from harness.report.tables import WORST_CASE
from harness.results import SCHEMA_VERSION


CellIndex = tuple[str, str, str, int, int]  # defense, attack, task, budget, seed


def rerun_test_curves(curves: pa.Table | None) -> dict[CellIndex, list[list[tuple[float, float]]]]:
    """Cell -> its reruns' test curves ((step, accuracy) points each), from a curves table (CURVE_SCHEMA)."""
    if curves is None or curves.num_rows == 0:
        return {}
    import pyarrow.compute as pc

    chosen = curves.filter(pc.and_(pc.equal(curves["phase"], "rerun"), pc.equal(curves["split"], "test")))
    by_trial: dict[CellIndex, dict[str, list[tuple[float, float]]]] = {}
    for r in chosen.select(["defense", "attack", "task", "budget", "seed", "trial_id", "step", "accuracy"]).to_pylist():
        key = (r["defense"], r["attack"], r["task"], r["budget"], r["seed"])
        by_trial.setdefault(key, {}).setdefault(r["trial_id"], []).append((float(r["step"]), float(r["accuracy"])))
    return {key: list(trials.values()) for key, trials in by_trial.items()}


def batch_size(cell: dict[str, Any]) -> float | None:
    """The selected configuration's batch size (None when it has none)."""
    try:
        value = json.loads(cell.get("best_hyperparameters") or "{}").get("batch_size")
    except (json.JSONDecodeError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def selected_cells(key: tuple, group: Group) -> dict[int, dict[str, Any]]:
    """Seed -> the ok cell that gave the group's value (worst case: of the attack selected on validation)."""
    attack = key[1]
    out = {}
    for c in group.cells:
        wanted = group.selected.get(c["seed"]) if attack == WORST_CASE else attack
        if c["seed"] in group.values and c["attack"] == wanted and is_ok(c):
            out[c["seed"]] = c
    return out


def group_curve(key: tuple, group: Group, index: dict[CellIndex, list], examples: bool = False
                ) -> tuple[list[tuple[float, float]], int]:
    """A group's compute curve and the seeds it is over: the mean over seeds of each selected cell's curve (the mean
    over its reruns), on an axis of steps or, with `examples`, of examples seen (steps x the cell's batch size).
    Empty when a seed's cell has no curve (or, for examples, no batch size)."""
    per_seed = []
    for seed, c in sorted(selected_cells(key, group).items()):
        reruns = index.get((c["defense"], c["attack"], c["task"], c["budget"], seed))
        scale = batch_size(c) if examples else 1.0
        if not reruns or scale is None:
            return [], 0
        per_seed.append([(x * scale, v) for x, v in mean_curve(reruns)])
    return mean_curve(per_seed), len(per_seed)


def curve_rows(groups: dict[tuple, Group], keys: list[tuple], index: dict[CellIndex, list]) -> list[dict[str, Any]]:
    """The board's curves table (CURVES_SCHEMA): every worst-case group's compute curve."""
    rows = []
    for key in keys:
        defense, attack, task, role, budget = key
        if attack != WORST_CASE:
            continue
        curve, n = group_curve(key, groups[key], index)
        rows += [{"schema_version": SCHEMA_VERSION, "defense": defense, "task": task, "task_role": role,
                  "budget": budget, "step": int(round(x)), "n_seeds": n, "test_accuracy_mean": m} for x, m in curve]
    return rows


def compute_costs(harmful: dict[int, Group], defense: str, task: str | None, index: dict[CellIndex, list],
                  threshold: float | None) -> dict[int, tuple[float | None, float | None, str]]:
    """Budget -> (steps, examples seen, flag) for the defense's worst-case harmful curve to reach `threshold`."""
    out = {}
    for budget, group in sorted(harmful.items()):
        if not group.values:
            continue
        key = (defense, WORST_CASE, task, "harmful", budget)
        if threshold is None:
            out[budget] = (None, None, "no threshold")
            continue
        steps, flag = first_crossing(group_curve(key, group, index)[0], threshold)
        examples = first_crossing(group_curve(key, group, index, examples=True)[0], threshold)[0]
        out[budget] = (steps, examples, flag)
    return out


