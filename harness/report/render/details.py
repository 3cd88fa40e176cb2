"""What a board's numbers come from, as a reader needs it beside them: the data source, tasks and budgets, the attack
suite, seeds and trial counts, the majority class (`board_facts`); and, per defense, every cell behind its rows:
the configuration its attack search selected, the per-seed values, and the files they came from
(`defense_details`).

Both read the merged cells the tables were aggregated from (`LeaderboardTables.cells`); a bundle without them (read
back from the Parquet files) has no facts and no drill-down.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from harness.report.render.sections import board_labels, majority_note
from harness.report.tables import ROLES, WORST_CASE, CellFiles, LeaderboardTables

STANDIN_PREFIX = "standin"  # how `harness.data.sources` names the bundled corpus in a cell's data_id
STANDIN_TEXT = ("the synthetic stand-in corpus bundled with sdm-bench (generated from public first-name and "
                "occupation data in the schema of Bias in Bios; docs/data-card.md): not the real Bias in Bios, so "
                "these numbers show how the harness reads defenses, not how the defenses fare on the real corpus")


@dataclass(frozen=True)
class Fact:
    name: str
    text: str


@dataclass(frozen=True)
class CellDetail:
    """One cell as the drill-down lists it."""

    role: str
    task: str
    attack: str
    budget: int
    seed: int
    status: str
    chosen: bool  # the worst case over attacks took this cell for its seed (best validation accuracy)
    hyperparameters: str  # the configuration the search selected, "name=value" joined by ", "
    n_trials: int | None
    val_accuracy: float | None
    test_accuracy: float | None  # mean over the reruns of the selected configuration
    test_accuracy_std: float | None  # over those reruns
    found_val_accuracy: float | None  # the selected trial replayed with its own seed (null in runs before the replay)
    found_test_accuracy: float | None
    files: CellFiles


@dataclass(frozen=True)
class DefenseDetail:
    defense: str
    label: str
    verdict: str
    cells: tuple[CellDetail, ...]


def is_standin(data_id: str) -> bool:
    return data_id.startswith(STANDIN_PREFIX)


def distinct(rows: list[dict[str, Any]], column: str) -> list:
    return sorted({r[column] for r in rows if r.get(column) is not None})


def number_range(values: list[int]) -> str:
    """"8" or "8-40": the spread of a count over cells."""
    return "—" if not values else str(values[0]) if min(values) == max(values) else f"{min(values)}-{max(values)}"


def board_facts(tables: LeaderboardTables) -> list[Fact]:
    """Data, tasks, attack suite, seeds, trials and the majority class of the board, as short texts."""
    if tables.cells is None or tables.cells.num_rows == 0:
        return []
    rows = tables.cells.to_pylist()
    data_ids = distinct(rows, "data_id")
    data = (STANDIN_TEXT if data_ids and all(map(is_standin, data_ids)) else
            "; ".join(data_ids) or "—") + f" (fingerprint {', '.join(distinct(rows, 'data_fingerprint')) or '—'})"
    tasks = []
    for role in ROLES:
        mine = [r for r in rows if r["task_role"] == role]
        if mine:
            tasks.append(f"{role}: {mine[0]['task']}, budgets {', '.join(map(str, distinct(mine, 'budget')))}")
    attacks = []
    for attack in distinct(rows, "attack"):
        mine = [r for r in rows if r["attack"] == attack]
        roles = ", ".join(role for role in ROLES if any(r["task_role"] == role for r in mine))
        attacks.append(f"{attack} ({roles}: {number_range(distinct(mine, 'n_trials'))} search trials a cell, "
                       f"{number_range(distinct(mine, 'n_reruns'))} reruns of the selected configuration)")
    seeds = distinct(rows, "seed")
    seeding = ", ".join(distinct(rows, "defense_seeding")) or "not recorded"
    failed = sum(r["status"] != "ok" for r in rows)
    trials = sum(r["n_trials"] or 0 for r in rows)
    selection = ", ".join(distinct(rows, "selection"))
    facts = [
        Fact("data", data),
        Fact("tasks", "; ".join(tasks)),
        Fact("attack suite", "; ".join(attacks) + "; the worst case over attacks takes, per seed, the attack "
                                                 "with the best validation accuracy"),
        Fact("seeds", f"{len(seeds)} ({', '.join(map(str, seeds))}); defense training: {seeding}"),
        Fact("trials", f"{len(rows)} cells ({failed} failed), {trials} search trials in all; selection: "
                       f"{selection} (heldout: on the attacker's validation rows, never on test)"),
    ]
    note = majority_note(tables)
    facts.append(Fact("majority class", note or "not known: the runs' config (run.json) or data is not here"))
    return facts


def hyperparameter_text(text: str | None) -> str:
    if not text:
        return "—"
    try:
        values = json.loads(text)
    except ValueError:
        return text
    return ", ".join(f"{k}={f'{v:.3g}' if isinstance(v, float) else v}" for k, v in values.items())


def chosen_cells(tables: LeaderboardTables) -> set[tuple[str, str, int, int, str]]:
    """(defense, role, budget, seed, attack) of the cells the worst case took, from its `selected_attacks`."""
    chosen = set()
    for r in tables.leaderboard.to_pylist():
        if r["attack"] != WORST_CASE or not r["selected_attacks"]:
            continue
        for part in r["selected_attacks"].split(","):
            seed, _, attack = part.partition(":")
            chosen.add((r["defense"], r["task_role"], r["budget"], int(seed), attack))
    return chosen


def defense_details(tables: LeaderboardTables) -> list[DefenseDetail]:
    """Per defense of the summary, in board order: its cells by role, budget, seed and attack."""
    if tables.cells is None:
        return []
    labels = board_labels(tables)
    chosen = chosen_cells(tables)
    rows = tables.cells.to_pylist()
    role_order = {role: i for i, role in enumerate(ROLES)}
    details = []
    for summary in tables.summary.to_pylist():
        defense = summary["defense"]
        mine = sorted((r for r in rows if r["defense"] == defense),
                      key=lambda r: (role_order.get(r["task_role"], 9), r["budget"], r["seed"], r["attack"]))
        cells = tuple(CellDetail(
            role=r["task_role"], task=r["task"], attack=r["attack"], budget=r["budget"], seed=r["seed"],
            status=r["status"], chosen=(defense, r["task_role"], r["budget"], r["seed"], r["attack"]) in chosen,
            hyperparameters=hyperparameter_text(r["best_hyperparameters"]), n_trials=r["n_trials"],
            val_accuracy=r["best_val_accuracy"], test_accuracy=r["test_accuracy"],
            test_accuracy_std=r["test_accuracy_std"], found_val_accuracy=r.get("found_val_accuracy"),
            found_test_accuracy=r.get("found_test_accuracy"),
            files=tables.files.get(r["cell_id"], CellFiles(None, None)),
        ) for r in mine)
        details.append(DefenseDetail(defense, labels.get(defense, defense), summary["verdict"], cells))
    return details
