"""`sdm run CONFIG --dry-run`: the plan of a run, checked as far as this machine can without the network, and its
cost, with nothing written and nothing started.

It checks the config, the plugins with their parameters and search spaces, the run directory, the data (files,
pools, budget samples) and the base model where they are on this machine, and the resources a trial and a defense
training ask for against this machine when the run would start a local Ray instance. What it cannot check offline
(a hub id, a cluster) it names. It never contacts the hub: `HF_HUB_OFFLINE` and `HF_DATASETS_OFFLINE` are set before
any hub library is imported, so no request is made and none is retried.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from harness.config import ExperimentConfig
from harness.cost import CostEstimate, estimate_cost
from harness.plan import REPLAYS, Plan, plan_cells, validate_plugins

OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@dataclass(frozen=True)
class DryRun:
    plan: Plan
    checked: list[str]  # what was checked, in the order it was
    not_checked: list[str]  # what could not be checked here, each with why
    cost: CostEstimate

    def to_json(self) -> dict[str, Any]:
        cells = [{"cell_id": c.cell_id, "defense": c.defense, "attack": c.attack, "task": c.task,
                  "task_role": c.task_role, "budget": c.budget, "seed": c.seed, "status": cell_status(self.plan, c)}
                 for c in self.plan.cells]
        return {
            "cells": cells,
            "cells_to_run": len(self.plan.todo),
            "trials_per_cell": self.plan.trials_per_cell,
            "max_trials": len(self.plan.todo) * self.plan.trials_per_cell,
            "checked": self.checked,
            "not_checked": self.not_checked,
            "cost": self.cost.to_json(),
        }


def go_offline() -> None:
    """No hub request from this process: set before huggingface_hub, transformers or datasets is imported."""
    for name in OFFLINE_ENV:
        os.environ[name] = "1"


def cell_status(plan: Plan, cell: Any) -> str:
    if cell.cell_id in plan.finished:
        return "finished"
    return "failed: retry" if cell.cell_id in plan.failed else "to run"


def dry_run(cfg: ExperimentConfig, origin: str, address: str | None = None) -> DryRun:
    """Check the run `cfg` describes as far as this machine can offline; bad input raises UserError, as a run would."""
    go_offline()
    import torch

    from harness.data.prepare import check_data
    from harness.data.sources import HubSource, source_for
    from harness.defend import training_device
    from harness.models import base_fingerprint, load_tokenizer, names_hub_model
    from harness.runner import check_run_dir
    from harness.training import resolve_precision

    attacks = validate_plugins(cfg, origin)
    check_run_dir(cfg, cfg.run_dir())
    plan = plan_cells(cfg, cfg.run_dir())
    checked = ["config", "plugins and their parameters", "search spaces", "run directory"]
    not_checked = []
    if isinstance(source_for(cfg.data), HubSource):
        not_checked.append(f"data.source '{cfg.data.source}' (a hub id: its pools and budgets)")
    else:
        check_data(cfg)
        checked.append("data (files, pools, budget samples)")
    if names_hub_model(cfg.model):
        not_checked.append(f"model.source '{cfg.model.source}' (a hub id)")
    else:
        load_tokenizer(cfg.model)
        base_fingerprint(cfg.model)
        checked.append("base model (tokenizer and weights)")
    address = address or cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    if address:
        not_checked.append(f"resources (the cluster at {address} is not contacted)")
    else:
        short = resources_short_here(cfg)
        if short:
            not_checked.append(f"resources: {'; '.join(short)}, so it needs a cluster (--address)")
        else:
            checked.append("resources (against this machine)")
    precision = resolve_precision(cfg.model.precision, training_device(cfg))
    return DryRun(plan, checked, not_checked,
                  estimate_cost(cfg, plan, attacks, precision, gpus=torch.cuda.device_count()))


def resources_short_here(cfg: ExperimentConfig) -> list[str]:
    """The resource requests this machine cannot meet, e.g. "defense_training.resources.gpu 1 (this machine has 0)"."""
    import torch

    from harness.resources import resource_requests

    have = {"cpu": float(os.cpu_count() or 1), "gpu": float(torch.cuda.device_count())}
    return [f"{where}.{kind} {getattr(resources, kind):g} (this machine has {have[kind]:g})"
            for where, resources in resource_requests(cfg).items() for kind in ("cpu", "gpu")
            if getattr(resources, kind) > have[kind]]


def summary_lines(dry: DryRun, cfg: ExperimentConfig) -> list[str]:
    """What a dry run says below its table of cells: counts, what it checked, what it could not, the cost."""
    from harness.resources import describe

    plan, cost = dry.plan, dry.cost
    lines = [
        f"{len(plan.todo)} cells to run, at most {len(plan.todo) * plan.trials_per_cell} trials "
        f"({cfg.search.num_samples} search + {cfg.search.reruns} reruns + {REPLAYS} replay per cell)",
        "checked: " + ", ".join(dry.checked),
    ]
    if dry.not_checked:
        lines.append("could not check offline: " + "; ".join(dry.not_checked))
    for a in cost.attacks:
        asha = f", {a.search_steps:,.0f} a search trial under ASHA" if a.search_steps != a.mean_steps else ""
        priced = ("" if a.encoder_share == 1 else " (a head on cached features: not priced)" if not a.encoder_share
                  else f" ({1 - a.encoder_share:.0%} of them a head on cached features: not priced)")
        phase = f", after {a.phase_steps:,.0f} of {' and '.join(a.phases)}" if a.phases else ""
        lines.append(f"  {a.attack}: {a.cells} cells, at most {a.trials:,} trials, {a.trial_steps:,.0f} trial-steps "
                     f"({a.mean_steps:,.0f} steps a trial{asha}{phase}){priced}")
    if cost.hours is None:
        hours = "no full-encoder step to price"
    else:
        took = f"{cost.hours:,.1f} h" if cost.hours >= 1 else f"{cost.hours * 60:.1f} min"
        scored = cost.checked_rows + cost.feature_rows
        hours = (f"about {took} of compute on this machine ({cost.cores} cores, {cost.parallel} trials at once): "
                 f"{cost.priced_steps:,.0f} encoder steps at {cost.step_seconds:.2f} s and {scored:,.0f} rows of "
                 f"checks and features at {cost.step.forward_per_row * 1000:.0f} ms, from {cost.step.measured} "
                 f"({cost.step.source})")
    lines.append(f"cost: {cost.trial_steps:,.0f} trial-steps, at most; {hours}")
    lines.append(f"  at once on this machine: {cost.trainings_at_once} of {cost.trainings} defense trainings "
                 f"(defense_training.resources {describe(cfg.defense_training.resources)} each), then "
                 f"{cost.cells_at_once} cells at a time sharing {cost.parallel} trial workers "
                 f"({cfg.search.max_concurrent} trials a cell at once)")
    notes = [*cost.notes, f"defense training not included ({cost.defense_steps:,} steps to train), nor Ray's and "
             "Tune's start-up and per-trial overhead"]
    lines.append("  " + "; ".join(notes))
    return lines
