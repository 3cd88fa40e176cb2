"""What a run's attack searches will cost, before anything runs: trial-steps per cell (from the search space's step
range, ASHA where configured), validation checks, frozen features, and hours on this machine from measured costs.

A trial-step is one optimizer step of one attack trial. A cell runs at most `num_samples` search trials (the plateau
stop may end it sooner), `reruns` reruns of the selected configuration and a replay of the selected trial (priced as a
rerun), so the count is an upper bound on the trials and an expectation over the steps each one draws. A trial that
trains a linear head on cached frozen features (the `probe` attack, `finetune` in probe mode) costs milliseconds a step:
its steps are counted, not priced. Every other trial's steps are priced as full fine-tuning steps, an upper bound for
the ones that adapt less (a top-k or LoRA trial still runs the whole encoder forward). Besides its steps, an encoder
trial pays a forward pass over the validation rows at every check (a rerun also over the test rows, as it records the
test curve), and every step an attack runs before the steps ASHA counts (`Attack.phase_steps`: benign-first's benign
phase). A defended model's frozen features are encoded once (validation, test, and each task's largest budget sample).
Defense training is counted in its own steps and not priced: its step costs differ by defense by orders of magnitude
(docs/benchmarks.md).
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from harness.config import ExperimentConfig
from harness.plan import REPLAYS, Plan
from harness.plugins import Attack
from harness.space import Choice, Dim, Fixed, IntRange

QUANTILES = 201  # points of a steps distribution the expectations are taken over


@dataclass(frozen=True)
class StepCost:
    """Measured costs of the embedded encoder at one precision, for rows of `tokens` tokens, and what they were
    measured on. A full fine-tuning step of `rows` rows costs `step_fixed + step_per_row * rows` seconds: the fixed
    part is the optimizer's update of every weight and the batch's overhead, which a linear scaling in rows leaves out
    (a batch of 8 costs more than half a batch of 16). A forward pass without gradients (a validation check, frozen
    features) costs `forward_per_row` a row."""

    step_fixed: float
    step_per_row: float
    forward_per_row: float
    tokens: int  # per row
    measured: str  # the model, threads and precision
    source: str  # where the figures come from

    def step_seconds(self, rows: float, tokens: float) -> float:
        return self.step_fixed + self.step_per_row * rows * tokens / self.tokens

    def forward_seconds(self, rows: float, tokens: float) -> float:
        return self.forward_per_row * rows * tokens / self.tokens


# The embedded MiniLM-L6 (6 layers, hidden 384, 22.7M parameters), fused AdamW, 64 tokens a row, 1 thread, on an idle
# 2-core AMD EPYC (avx512_bf16, torch 2.13.0+cpu), measured 2026-12-02: a full fine-tuning step of batch 8 took
# 0.31 s bf16 and 0.60 s fp32, of batch 16 0.56 s and 1.10 s (two points give the fixed part and the part per row);
# a validation check of 300 rows took 3.3 s and 6.1 s. Checked against whole runs in docs/benchmarks.md.
SOURCE = "docs/reproduce.md, A paper-strength attacker: measured 2026-12-02 on an idle 2-core AMD EPYC"
MEASURED = {
    "bf16": StepCost(0.06, 0.03125, 0.011, 64, "MiniLM-L6, 64 tokens a row, bf16, 1 thread", SOURCE),
    "fp32": StepCost(0.10, 0.0625, 0.0203, 64, "MiniLM-L6, 64 tokens a row, fp32, 1 thread", SOURCE),
}


@dataclass(frozen=True)
class AttackCost:
    """One attack's share of a run: its cells still to run and what their trials cost."""

    attack: str
    cells: int
    trials: int  # at most
    trial_steps: float  # expected, at most `trials` trials, phase steps included
    mean_steps: float  # a trial's expected steps, before ASHA
    search_steps: float  # a search trial's expected steps, ASHA included
    phases: tuple[str, ...]  # the dimensions of `Attack.phase_steps`
    phase_steps: float  # a trial's expected steps of those dimensions (before the ones ASHA counts), in every trial
    rows_per_step: float  # expected batch rows
    tokens_per_row: int
    encoder_share: float  # the share of its trials that run the encoder (the rest train a head on cached features)
    checked_rows: float  # rows the encoder trials' validation checks (and the reruns' test scoring) run forward over
    step_seconds: float  # one encoder step at `rows_per_step` rows, as measured
    seconds: float  # its encoder trials' steps and checks, on one worker

    @property
    def priced_steps(self) -> float:
        return self.trial_steps * self.encoder_share


@dataclass(frozen=True)
class CostEstimate:
    attacks: list[AttackCost]
    trial_steps: float
    priced_steps: float  # the full-encoder steps of the hours
    checked_rows: float  # the encoder trials' checks, in rows run forward
    feature_rows: float  # the rows encoded once per defended model for the attacks on cached features
    hours: float | None  # None: nothing is priced
    step: StepCost
    step_seconds: float  # an encoder step's mean cost over the priced steps
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


def asha_outcomes(steps: float, grace: int, factor: float, max_t: int) -> list[tuple[float, float]]:
    """The (steps run, probability) a search trial ends with under ASHA when it would run `steps`: it runs to the
    first rung (`grace`), and on past each rung with probability 1 / `factor` (ASHA keeps the top 1 / `factor` of the
    trials there)."""
    rungs = [0.0]
    while grace * factor ** (len(rungs) - 1) < max_t:
        rungs.append(grace * factor ** (len(rungs) - 1))
    outcomes = []
    for k in range(1, len(rungs)):
        if steps <= rungs[k]:
            break
        outcomes.append((rungs[k], (1 - 1 / factor) / factor ** (k - 1)))  # stopped at rung k
    return [*outcomes, (steps, 1 / factor ** len(outcomes))]


def asha_steps(steps: float, grace: int, factor: float, max_t: int) -> float:
    """A search trial's expected steps under ASHA when it would run `steps` (`asha_outcomes`)."""
    return sum(run * p for run, p in asha_outcomes(steps, grace, factor, max_t))


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


def checks_in(steps: float, eval_every: int) -> float:
    """Validation checks of a trial that runs `steps` steps: one every `eval_every` and one at its last step (without
    `eval_every`, the last step's only)."""
    return float(math.ceil(steps / eval_every)) if eval_every else 1.0


def attack_cost(cfg: ExperimentConfig, attack: Attack, cells: int, step: StepCost) -> AttackCost:
    from harness.plan import max_steps

    search = cfg.search
    draws = steps_quantiles(attack.space.get("steps"))
    mean_steps = _mean(draws)
    # Each draw's outcomes as (steps run, probability): a search trial's may end at an ASHA rung, a rerun's may not.
    rerun_outcomes = [[(s, 1.0)] for s in draws]
    if search.asha is not None:
        top = max_steps(attack)
        search_outcomes = [asha_outcomes(s, search.asha.grace_period, search.asha.reduction_factor, top)
                           for s in draws]
    else:
        search_outcomes = rerun_outcomes

    def expected(outcomes: list[list[tuple[float, float]]], value: Callable[[float], float]) -> float:
        return _mean([sum(value(run) * p for run, p in draw) for draw in outcomes])

    search_steps = expected(search_outcomes, float)
    phase_steps = sum(_mean(steps_quantiles(attack.space.get(name))) for name in attack.phase_steps())
    batch = attack.space.get("batch_size")
    # A space without an integer batch size (a plugin's own) is priced at the benchmarks' batch of 16.
    rows = _mean(steps_quantiles(batch)) if isinstance(batch, (Choice, Fixed, IntRange)) else 16.0
    scored = search.reruns + REPLAYS  # priced alike: a replay trains as long as the selected trial did
    per_cell = search.num_samples * (search_steps + phase_steps) + scored * (mean_steps + phase_steps)
    # A search trial scores the validation rows at every check; a rerun scores the test rows there too, and once more
    # at the end with the weights it selected.
    validation, test = cfg.data.validation_size, cfg.data.test_size
    search_checks = expected(search_outcomes, lambda run: checks_in(run, search.eval_every))
    rerun_checks = expected(rerun_outcomes, lambda run: checks_in(run, search.eval_every))
    rows_per_cell = (search.num_samples * search_checks * validation
                     + scored * (rerun_checks * (validation + test) + test))
    share = encoder_share(attack)
    tokens = cfg.model.max_length
    step_seconds = step.step_seconds(rows, tokens)
    seconds = cells * share * (per_cell * step_seconds + step.forward_seconds(rows_per_cell, tokens))
    return AttackCost(attack.name, cells, cells * (search.num_samples + scored), cells * per_cell,
                      mean_steps, search_steps, attack.phase_steps(), phase_steps, rows, tokens, share,
                      cells * share * rows_per_cell, step_seconds, seconds)


def feature_rows(cfg: ExperimentConfig, plan: Plan, attacks: dict[str, Attack]) -> float:
    """Rows encoded for the attacks on cached features: per defended model, the validation and test rows once, and
    each attacked task's largest budget sample (`harness.cells`' feature cache)."""
    roles: dict[tuple[str, int], set[str]] = {}
    for cell in plan.todo:
        if attacks[cell.attack].needs_features():
            roles.setdefault((cell.defense, cell.seed), set()).add(cell.task_role)
    held_out = cfg.data.validation_size + cfg.data.test_size
    return float(sum(held_out + sum(max(cfg.budgets_for(role)) for role in model_roles)
                     for model_roles in roles.values()))


def estimate_cost(cfg: ExperimentConfig, plan: Plan, attacks: dict[str, Attack], precision: str,
                  cores: int | None = None, gpus: int = 0) -> CostEstimate:
    """The cost of the cells `plan` has still to run, on a machine of `cores` CPUs (default: this one's) training at
    `precision` ("bf16" or "fp32", as the config resolves here) and holding `gpus` GPUs."""
    from harness.defend import make_defense
    from harness.resources import cells_at_once, per_node, workers_wanted

    cores = cores or os.cpu_count() or 1
    step = MEASURED[precision]
    costs = [attack_cost(cfg, attacks[name], sum(c.attack == name for c in plan.todo), step) for name in attacks]
    costs = [c for c in costs if c.cells]
    priced_steps = sum(c.priced_steps for c in costs)
    step_seconds = sum(c.priced_steps * c.step_seconds for c in costs) / priced_steps if priced_steps else 0.0
    features = feature_rows(cfg, plan, attacks)
    seconds = sum(c.seconds for c in costs) + step.forward_seconds(features, cfg.model.max_length)
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
    hours = seconds / parallel / 3600 if seconds else None
    return CostEstimate(costs, sum(c.trial_steps for c in costs), priced_steps, sum(c.checked_rows for c in costs),
                        features, hours, step, step_seconds, parallel, cores, defense_steps, len(trainings),
                        trainings_at_once, cells_in_flight, notes)
