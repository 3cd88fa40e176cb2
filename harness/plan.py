"""The plan of a run: config -> cells (defense x attack x task x budget x seed), and the checks every plugin must pass
before anything runs. Light on purpose: no Ray, Tune or Optuna, so `sdm defend`, `--dry-run` and the conformance kit
stay quick to import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import ExperimentConfig, SearchConfig
from harness.errors import UserError
from harness.plugins import Attack
from harness.space import Choice, Fixed, IntRange

# After its search a cell runs its `search.reruns` and one replay of the selected trial with its own seed
# (harness.search), each scored on test: the trials a cell runs beyond its search ones.
REPLAYS = 1


@dataclass(frozen=True)
class Cell:
    defense: str
    attack: str
    task: str
    task_role: str
    budget: int
    seed: int

    @property
    def cell_id(self) -> str:
        return f"{self.defense}__{self.attack}__{self.task}__b{self.budget}__s{self.seed}"


@dataclass
class Plan:
    cells: list[Cell]
    finished: set[str]  # cells with a result: never recomputed
    failed: set[str]  # cells recorded as failed by an earlier run: run again
    trials_per_cell: int

    @property
    def todo(self) -> list[Cell]:
        return [c for c in self.cells if c.cell_id not in self.finished]


def plan_cells(cfg: ExperimentConfig, run_dir: Path) -> Plan:
    """Every cell of the config, and which of them an earlier run in `run_dir` finished or recorded as failed."""
    from harness.results import read_cells

    roles = {"harmful": cfg.tasks.harmful, "desired": cfg.tasks.desired}
    cells = [
        Cell(d.cell_name, a.cell_name, roles[role], role, budget, seed)
        for d in cfg.defenses
        for a in cfg.attacks
        for role in cfg.tasks.attacked
        for budget in cfg.budgets_for(role)
        if cfg.runs_at(a, role, budget)
        for seed in cfg.seeds
    ]
    status = {row["cell_id"]: row["status"] for row in read_cells(run_dir).select(["cell_id", "status"]).to_pylist()}
    return Plan(
        cells,
        {c for c, s in status.items() if s == "ok"},
        {c for c, s in status.items() if s != "ok"},
        cfg.search.num_samples + cfg.search.reruns + REPLAYS,
    )


def validate_plugins(cfg: ExperimentConfig, origin: str) -> dict[str, Attack]:
    """Instantiate every plugin once so bad names, params and spaces fail before anything runs."""
    from harness.defend import make_defense
    from harness.registry import ATTACKS
    from harness.tracking import check_tracking

    for spec in cfg.defenses:
        make_defense(spec, origin)
    attacks = {
        spec.cell_name: ATTACKS.get(spec.name).from_spec(spec.params, spec.space, origin) for spec in cfg.attacks
    }
    check_search(cfg.search, attacks, origin)
    check_tracking(cfg.tracking, origin)
    return attacks


def max_steps(attack: Attack) -> int:
    """The most training steps the attack's space can draw: where ASHA's last rung sits."""
    dim = attack.space.get("steps")
    if isinstance(dim, IntRange):
        return dim.high
    if isinstance(dim, Choice) and all(isinstance(v, int) for v in dim.values):
        return max(dim.values)
    if isinstance(dim, Fixed) and isinstance(dim.value, int):
        return dim.value
    raise ValueError(f"attack '{attack.name}' has no integer 'steps' dimension to count ASHA's rungs in")


def check_search(search: SearchConfig, attacks: dict[str, Any], origin: str) -> None:
    """What the search protocol needs from the attacks, checked before anything runs."""
    if search.asha is None:
        return
    for attack in attacks.values():
        try:
            steps = max_steps(attack)
        except ValueError as exc:
            raise UserError(f"{origin}: search.asha: {exc}") from None
        if search.asha.grace_period >= steps:
            raise UserError(f"{origin}: search.asha.grace_period {search.asha.grace_period} is not below the most "
                            f"steps attack '{attack.name}' runs ({steps}): ASHA would never stop a trial")
