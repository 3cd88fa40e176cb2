"""Leaderboard groups: the cells of one defense x attack x task x budget over seeds, and the worst case over attacks
per seed (the attack whose selected configuration had the best validation accuracy)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.report.merge import search_counts
from harness.report.stats import bootstrap_interval, select_worst_case, t_interval
from harness.report.tables import BASELINES, PROVENANCE_SUMMARY, ROLES, WORST_CASE
from harness.results import SCHEMA_VERSION

log = logging.getLogger(__name__)


@dataclass
class Group:
    """One leaderboard row's cells: defense x attack x task x budget (attack `WORST_CASE`: over the attacks)."""

    values: dict[int, float]  # seed -> test accuracy of an ok cell (worst case: of the attack selected on validation)
    n_failed: int
    n_attacks: int
    cells: list[dict[str, Any]]
    val: dict[int, float]  # seed -> validation accuracy of the selected configuration
    selected: dict[int, str]  # worst case only: seed -> attack chosen on validation

    @property
    def mean(self) -> float | None:
        return float(np.mean(list(self.values.values()))) if self.values else None


def number(value: Any) -> float | None:
    """A cell's float, None for null or NaN."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def is_ok(cell: dict[str, Any]) -> bool:
    """A cell that is a result: finished ok, with a test accuracy."""
    return cell["status"] == "ok" and number(cell["test_accuracy"]) is not None


def joined(cells: list[dict[str, Any]], column: str) -> str | None:
    """The distinct non-empty values of a column, sorted and joined by ","; None when there are none."""
    values = sorted({str(c[column]) for c in cells if c.get(column) not in (None, "")})
    return ",".join(values) if values else None


def groups_of(cells: list[dict[str, Any]]) -> dict[tuple, Group]:
    """Per-attack groups, then one worst-case group per defense x task x budget."""
    groups: dict[tuple, Group] = {}
    for cell in cells:
        key = (cell["defense"], cell["attack"], cell["task"], cell["task_role"], cell["budget"])
        group = groups.setdefault(key, Group({}, 0, 1, [], {}, {}))
        group.cells.append(cell)
        if is_ok(cell):
            group.values[cell["seed"]] = cell["test_accuracy"]
            val = number(cell.get("best_val_accuracy"))
            if val is not None:
                group.val[cell["seed"]] = val
        else:
            group.n_failed += 1
    members: dict[tuple, dict[str, Group]] = {}
    for (defense, attack, task, role, budget), group in groups.items():
        members.setdefault((defense, WORST_CASE, task, role, budget), {})[attack] = group
    for key, parts in members.items():
        seeds = set().union(*(g.values for g in parts.values()))
        complete = sorted(s for s in seeds if all(s in g.val for g in parts.values()))
        if len(complete) < len(seeds):
            log.info("%s: %d seed(s) left out of the worst case (an attack without an ok cell with a validation "
                     "accuracy)", key, len(seeds) - len(complete))
        selected = {s: select_worst_case({a: g.val[s] for a, g in parts.items()}) for s in complete}
        groups[key] = Group(
            {s: parts[a].values[s] for s, a in selected.items()},
            sum(g.n_failed for g in parts.values()),
            len(parts),
            [c for g in parts.values() for c in g.cells],
            {s: parts[a].val[s] for s, a in selected.items()},
            selected,
        )
    return groups


def leaderboard_row(key: tuple, group: Group) -> dict[str, Any]:
    defense, attack, task, role, budget = key
    seeds = sorted(group.values)
    values = [group.values[s] for s in seeds]
    ci = t_interval(values)
    boot = bootstrap_interval(values)
    return {
        "schema_version": SCHEMA_VERSION,
        "defense": defense,
        "defense_variant": joined(group.cells, "defense_variant"),
        "attack": attack,
        "task": task,
        "task_role": role,
        "budget": budget,
        # incomplete: nothing failed, but no seed has a result from every attack (runs merged with other seeds)
        "status": "ok" if values else "failed" if group.n_failed else "incomplete",
        "n_attacks": group.n_attacks,
        "n_seeds": len(values),
        "seeds": ",".join(map(str, seeds)),
        "selected_attacks": ",".join(f"{s}:{group.selected[s]}" for s in seeds) if attack == WORST_CASE else None,
        "n_failed_cells": group.n_failed,
        "test_accuracy_mean": float(np.mean(values)) if values else None,
        "test_accuracy_std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
        "ci95_low": ci[0] if ci else None,
        "ci95_high": ci[1] if ci else None,
        "single_seed": len(values) == 1,
        "bootstrap_ci95_low": boot[0] if boot else None,
        "bootstrap_ci95_high": boot[1] if boot else None,
        **{name: joined(group.cells, name) for name in PROVENANCE_SUMMARY},
        **search_counts([c for c in group.cells if is_ok(c)]),
    }


def defense_order(defenses: Iterable[str]) -> list[str]:
    """The baselines first, in their order, then the other defenses alphabetically."""
    names = set(defenses)
    return [d for d in BASELINES if d in names] + sorted(names - set(BASELINES))


def row_order(key: tuple, defenses: list[str]) -> tuple:
    defense, attack, task, role, budget = key
    role_rank = ROLES.index(role) if role in ROLES else len(ROLES)
    return (role_rank, task, defenses.index(defense), attack != WORST_CASE, attack, budget)


def worst_by_role(groups: dict[tuple, Group]) -> dict[str, dict[str, dict[int, Group]]]:
    """role -> defense -> budget -> worst-case group; the merge checks left one task per role."""
    worst: dict[str, dict[str, dict[int, Group]]] = {role: {} for role in ROLES}
    for (defense, attack, _task, role, budget), group in groups.items():
        if attack == WORST_CASE and role in worst:
            worst[role].setdefault(defense, {})[budget] = group
    return worst


def tasks_by_role(groups: dict[tuple, Group]) -> dict[str, str]:
    return {role: task for (_, attack, task, role, _), _g in groups.items() if attack == WORST_CASE}


