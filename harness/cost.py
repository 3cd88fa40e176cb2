"""What a run's attack searches will cost, before anything runs: trial-steps per cell (from the search space's step
range, ASHA where configured) and hours on this machine from a measured cost per step.

A trial-step is one optimizer step of one attack trial. A cell runs at most `num_samples` search trials (the plateau
stop may end it sooner) and `reruns` reruns of the selected configuration, so the count is an upper bound on the
trials and an expectation over the steps each one draws. A trial that trains a linear head on cached frozen features
(the `probe` attack, `finetune` in probe mode) costs milliseconds a step: its steps are counted, not priced. Every
other trial's steps are priced as full fine-tuning steps, an upper bound for the ones that adapt less (a top-k or LoRA
trial still runs the whole encoder forward). Defense training is counted in its own steps and not priced: its step costs
differ by defense by orders of magnitude (docs/benchmarks.md).
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.config import ExperimentConfig
from harness.plan import Plan
from harness.plugins import Attack
from harness.space import Choice, Dim, Fixed, IntRange

QUANTILES = 201  # points of a steps distribution the expectations are taken over


@dataclass(frozen=True)
class StepCost:
    """A measured cost of one full fine-tuning step, and what it was measured on."""

    seconds: float
    rows: int
    tokens: int  # per row
    measured: str  # the model, threads and precision
    source: str  # where the figure comes from


# Full fine-tuning step of the embedded MiniLM-L6 (6 layers, hidden 384, 22.7M parameters), fused AdamW, 16 rows x 64
# tokens, 1 thread, on an idle 2-core AMD EPYC (avx512_bf16/amx_bf16, torch 2.13.0+cpu): benchmarks/precision.py part
# (a), the median of the steps after the first. Recorded, with a re-measurement under load, in docs/benchmarks.md.
SOURCE = "docs/benchmarks.md, Mixed precision: benchmarks/precision.py on an idle 2-core AMD EPYC"
MEASURED = {
    "bf16": StepCost(0.27, 16, 64, "MiniLM-L6 full fine-tuning, 16 x 64 tokens, bf16, 1 thread", SOURCE),
    "fp32": StepCost(0.59, 16, 64, "MiniLM-L6 full fine-tuning, 16 x 64 tokens, fp32, 1 thread", SOURCE),
}


@dataclass(frozen=True)
class AttackCost:
    """One attack's share of a run: its cells still to run and what their trials cost."""

    attack: str
    cells: int
    trials: int  # at most
    trial_steps: float  # expected, at most `trials` trials
    mean_steps: float  # a trial's expected steps, before ASHA
    search_steps: float  # a search trial's expected steps, ASHA included
    tokens_per_step: float  # expected rows x max_length
    encoder_share: float  # the share of its trials that run the encoder (the rest train a head on cached features)

    @property
    def priced_steps(self) -> float:
        return self.trial_steps * self.encoder_share


@dataclass(frozen=True)
class CostEstimate:
    attacks: list[AttackCost]
    trial_steps: float
    priced_steps: float  # the full-encoder steps of the hours
    hours: float | None  # None: no step is priced
    step: StepCost
    step_seconds: float  # the measured cost scaled to the config's tokens per step (the attacks' mean)
    parallel: int  # trials at once on this machine
    cores: int
    defense_steps: int  # the trainings still to run, in their own steps, not in `hours`
    trainings: int  # the defense trainings (defense x seed) still to run
    trainings_at_once: int  # of them, side by side on this machine (each with `defense_training.resources`)
    cells_at_once: int  # cells searched side by side on this machine, after the trainings
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def steps_quantiles(dim: Dim | None) -> list[float]:
    """Evenly spaced quantiles of the steps a trial draws from its space's `steps` dimension."""
    if isinstance(dim, Fixed):
        return [float(dim.value)]
    if isinstance(dim, Choice):
        return [float(v) for v in dim.values]
    if isinstance(dim, IntRange):
        qs = [(i + 0.5) / QUANTILES for i in range(QUANTILES)]
        if dim.log and dim.low > 0:
            return [math.exp(math.log(dim.low) + q * (math.log(dim.high) - math.log(dim.low))) for q in qs]
        return [dim.low + q * (dim.high - dim.low) for q in qs]
    raise ValueError("no integer 'steps' dimension")


def asha_steps(steps: float, grace: int, factor: float, max_t: int) -> float:
    """A search trial's expected steps under ASHA when it would run `steps`: it runs to the first rung (`grace`), and
    on past each rung with probability 1 / `factor` (ASHA keeps the top 1 / `factor` of the trials there)."""
    rungs = [0.0]
    while grace * factor ** (len(rungs) - 1) < max_t:
        rungs.append(grace * factor ** (len(rungs) - 1))
    expected = 0.0
    for k, start in enumerate(rungs):
        end = rungs[k + 1] if k + 1 < len(rungs) else math.inf
        expected += max(0.0, min(steps, end) - start) / factor ** k
    return expected


def encoder_share(attack: Attack) -> float:
    """The share of the space's configurations (each choice weighted equally) whose trials run the encoder rather
    than a head on cached features. Attacks built on `FineTuning` say what adapts per configuration (`adaptation`);
    any other attack's trials all count as running it."""
    adaptation = getattr(attack, "adaptation", None)
    if adaptation is None:
        return 1.0
    # What adapts depends on the choices only; a range stands at its low end (a valid value of its type).
    options = {name: dim.values if isinstance(dim, Choice) else [dim.value if isinstance(dim, Fixed) else dim.low]
               for name, dim in attack.space.items()}
    configs = [dict(zip(options, values)) for values in itertools.product(*options.values())]
    return sum(adaptation(config)["adapt"] != "probe" for config in configs) / len(configs)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def attack_cost(cfg: ExperimentConfig, attack: Attack, cells: int) -> AttackCost:
    from harness.plan import max_steps

    search = cfg.search
    draws = steps_quantiles(attack.space.get("steps"))
    mean_steps = _mean(draws)
    if search.asha is not None:
        top = max_steps(attack)
        search_steps = _mean([asha_steps(s, search.asha.grace_period, search.asha.reduction_factor, top)
                              for s in draws])
    else:
        search_steps = mean_steps
    batch = attack.space.get("batch_size")
    rows = _mean([float(v) for v in batch.values]) if isinstance(batch, Choice) else (
        float(batch.value) if isinstance(batch, Fixed) else float(MEASURED["fp32"].rows))
    per_cell = search.num_samples * search_steps + search.reruns * mean_steps
    return AttackCost(attack.name, cells, cells * (search.num_samples + search.reruns), cells * per_cell,
                      mean_steps, search_steps, rows * cfg.model.max_length, encoder_share(attack))


def estimate_cost(cfg: ExperimentConfig, plan: Plan, attacks: dict[str, Attack], precision: str,
                  cores: int | None = None, gpus: int = 0) -> CostEstimate:
    """The cost of the cells `plan` has still to run, on a machine of `cores` CPUs (default: this one's) training at
    `precision` ("bf16" or "fp32", as the config resolves here) and holding `gpus` GPUs."""
    from harness.defend import make_defense
    from harness.resources import cells_at_once, per_node, workers_wanted

    cores = cores or os.cpu_count() or 1
    costs = [attack_cost(cfg, attacks[name], sum(c.attack == name for c in plan.todo)) for name in attacks]
    costs = [c for c in costs if c.cells]
    step = MEASURED[precision]
    priced_steps = sum(c.priced_steps for c in costs)
    tokens = (sum(c.priced_steps * c.tokens_per_step for c in costs) / priced_steps) if priced_steps else 0.0
    # Linear in tokens per step: the measured step is a forward, backward and update of one batch.
    step_seconds = step.seconds * tokens / (step.rows * step.tokens) if tokens else 0.0
    per_trial = max(1.0, cfg.search.resources_per_trial.cpu)
    parallel = max(1, min(workers_wanted(cfg, len(plan.todo)), int(cores // per_trial)))
    cells_in_flight = cells_at_once(cfg.cluster.cells_at_once, parallel, cfg.search.max_concurrent, len(plan.todo))
    trainings = {(c.defense, cfg.defense_training.seed_for(c.seed)) for c in plan.todo}
    specs = {d.cell_name: d for d in cfg.defenses}
    defense_steps = sum(make_defense(specs[name], "config").total_steps() for name, _ in trainings)
    trainings_at_once = int(min(len(trainings), per_node(cfg.defense_training.resources, {"CPU": cores, "GPU": gpus})))
    notes = []
    if cfg.model.source not in ("embedded",) or cfg.model.num_hidden_layers:
        notes.append(f"the step cost is the embedded MiniLM-L6's; model '{cfg.model.source}'"
                     f"{f' cut to {cfg.model.num_hidden_layers} layers' if cfg.model.num_hidden_layers else ''} "
                     "costs more or less per token")
    if cfg.search.resources_per_trial.gpu or cfg.defense_training.resources.gpu:
        notes.append("the config asks for GPUs: this is the cost on this machine's CPUs, not on the cluster's GPUs")
    hours = priced_steps * step_seconds / parallel / 3600 if priced_steps else None
    return CostEstimate(costs, sum(c.trial_steps for c in costs), priced_steps, hours, step, step_seconds,
                        parallel, cores, defense_steps, len(trainings), trainings_at_once, cells_in_flight, notes)
