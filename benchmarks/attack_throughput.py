"""Attack-search throughput: sdm-bench's engine against transformers' `Trainer.hyperparameter_search` (Optuna).

Both sides train the same grid of `finetune` attack trials on one cell (the pretrained encoder, the harmful task,
one budget, seed 0): the same training rows, the same validation rows, the same model (`harness.classifier.Classifier`
on the base encoder, dropout off, as sdm-bench trains attacks) and the same list of configurations (learning rate,
steps, batch size, mode probe | full; AdamW without weight decay, constant rate).

- `sdm`: a real `sdm run` (`harness.runner.run_experiment`) of a generated one-cell config on a local Ray instance:
  seeded TPE behind a concurrency limit, persistent attack workers, frozen-feature cache for probes, one rerun of the
  selected configuration. The one change: Ray's `OptunaSearch` gets the grid as `points_to_evaluate`, so TPE
  proposes exactly the grid's configurations.
- `trainer`: what a user would otherwise write: `Trainer(model_init=...)` and
  `trainer.hyperparameter_search(backend="optuna", hp_space=..., n_trials=N)`, with Optuna's `GridSampler` over the
  grid's indices so each configuration is trained once. Each epoch's last, partial batch is dropped, so every step
  trains a full batch on both sides. A probe trial freezes the encoder, which still runs forward
  at every step. Trainer runs with torch's default threads (one per core) unless `--trainer-threads` says otherwise.

Each side runs in its own process (imports included in its time), one after the other; with two grids (`mixed`:
probe and full trials alternate, `full`: full fine-tuning only) the order alternates. Reported per side: wall time,
trials per hour, compute (time inside training and evaluation) and the overhead fraction, 1 - compute / (slots x
wall), where slots are the trials that run at once. sdm-bench's compute is each trial's `compute_seconds` (the trials
table's `wall_seconds`: the attack worker's whole `run`, so it also holds reloading the weights into the worker's
model and, on a worker's first trial, the worker's warm-up: imports, fetching the cell's payload, building the model;
the report shows first trials apart), plus the frozen-feature phase counted on every slot (the driver uses the whole
machine for it while the workers wait).
With `--cells N` the grid is searched in N cells (seeds 0..N-1, each its own budget sample), as a plan of cells is:
sdm-bench searches them at once (`cluster.cells_at_once: N`), sharing its workers; Trainer searches them one after the
other. Then sdm-bench's wall time also holds its reruns and replays (they overlap the other cells' searches), which
Trainer does not run: that counts against sdm-bench.
Trainer's compute is its training loop (`on_train_begin` to `on_train_end`) plus `eval_runtime`. sdm-bench's rerun of
the selected configuration is no part of the grid: its time is reported apart and left out of the wall time.

    .venv/bin/python benchmarks/attack_throughput.py --trials 12 --layers 2 --max-length 64
    .venv/bin/python benchmarks/attack_throughput.py --trials 12 --layers 2 --max-length 64 --precision bf16
    .venv/bin/python benchmarks/attack_throughput.py --trials 12 --layers 2 --max-length 64 --precision bf16 \
        --trainer-threads 1 --grids full --cells 4

Needs `accelerate` (for `Trainer`), listed in the `bench` extra: `.venv/bin/pip install -e '.[bench]'`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.processes import CpuLedger  # noqa: E402  (needs ROOT on the path)

SEED = 0  # the first cell's seed (budget sample) on both sides; `--cells N` adds the next N - 1
BATCH_SIZES = (12, 24, 48)  # the paper's set
# log10 ranges the grid draws learning rates from: a linear head on frozen features wants larger rates than the
# whole encoder (inside the paper's [1e-5, 1e-2]).
LOG10_LR = {"probe": (-3.0, -2.0), "full": (-5.0, -3.5)}
EVAL_BATCH = 128  # harness.training.EVAL_BATCH: both sides evaluate in batches of this size


# -- the grid and the one-cell config both sides share -----------------------------------------------------------------
def make_grid(n: int, kind: str, steps: list[int]) -> list[dict[str, Any]]:
    """`n` configurations drawn once with a fixed seed; `mixed` alternates probe and full, `full` is full only."""
    rng = random.Random(0)
    modes = ("full",) if kind == "full" else ("probe", "full")
    grid = []
    for i in range(n):
        mode = modes[i % len(modes)]
        grid.append({
            "mode": mode,
            "lr": float(f"{10 ** rng.uniform(*LOG10_LR[mode]):.2g}"),
            "steps": rng.choice(steps),
            "batch_size": rng.choice(BATCH_SIZES),
        })
    return grid


def searched(grid: list[dict[str, Any]]) -> list[str]:
    """Dimensions that take more than one value in the grid (the others are fixed in the search space)."""
    return [k for k in grid[0] if len({c[k] for c in grid}) > 1]


def experiment(opts: argparse.Namespace, grid: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """A one-cell sdm-bench config whose search space is exactly the grid's values."""
    space: dict[str, Any] = {"schedule": "constant"}  # Trainer's `lr_scheduler_type="constant"`
    for key in grid[0]:
        values = sorted({c[key] for c in grid})
        space[key] = {"type": "choice", "values": values} if len(values) > 1 else values[0]
    return {
        "experiment": "attack-throughput",
        "model": {"source": "embedded", "num_hidden_layers": opts.layers, "max_length": opts.max_length,
                  "precision": opts.precision},
        "data": {"source": "standin", "validation_size": opts.val_size, "test_size": opts.test_size},
        "tasks": {"attacked": ["harmful"]},
        "budgets": [opts.budget],
        "seeds": list(range(SEED, SEED + opts.cells)),
        "defenses": [{"name": "bert", "params": {"steps": 0}}],  # the pretrained encoder as it is
        "attacks": [{"name": "finetune", "space": space}],
        "search": {
            "num_samples": len(grid),
            "max_concurrent": opts.concurrent,
            "plateau_patience": len(grid),  # never stop before the grid is done
            "reruns": 1,  # the fewest the protocol allows; timed apart (one cell)
        },
        "cluster": {"cells_at_once": opts.cells},
        "output": str(out),
    }


# -- timing ------------------------------------------------------------------------------------------------------------
class Clock:
    """Start and end times of the first call to each wrapped function, relative to the clock's start (`t0`, epoch
    seconds: the cell searcher's clock, in another process, counts from the driver's start)."""

    def __init__(self, t0: float | None = None) -> None:
        self.t0 = time.time() if t0 is None else t0
        self.calls: dict[str, tuple[float, float]] = {}

    def now(self) -> float:
        return time.time() - self.t0

    def wrap(self, owner: Any, name: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = self.now()
            try:
                return original(*args, **kwargs)
            finally:
                self.calls.setdefault(name, (start, self.now()))  # later calls of a cached function cost nothing

        setattr(owner, name, timed)


# -- the sdm-bench side ------------------------------------------------------------------------------------------------
# Consecutive phases of `sdm run` on one cell, in `harness.runner.run_experiment`'s order: each ends where the
# named call starts (">") or ends ("<").
SDM_PHASES = [
    ("imports, config checks", "prepare_data>"),
    ("data: load, tokenize", "prepare_data<"),
    ("base model: load, fingerprint", "base_fingerprint<"),
    ("engine imports, Ray start, run files", "start_ray<"),
    ("defense training (0 steps, a Ray task), worker pool start", "__init__<"),
    ("frozen features, payload put", "run_cell>"),  # the cell searcher starts meanwhile
    ("Tuner setup", "fit>"),
    ("search: Tuner.fit", "fit<"),
    ("settle, selection", "run_all>"),
    ("rerun (not in the grid)", "run_all<"),
    ("tables, shutdown", None),
]
CELLS_PHASE = "the cells' searches, reruns and replays, overlapping"  # with --cells N > 1


def warm_started_searcher(points: list[dict[str, Any]], t0: float, clock_file: Path) -> Any:
    """`harness.flight.CellSearcher` with the one change to the engine: TPE proposes `points` first (Ray's own warm
    start). The cell's search runs in this actor, so its phases are clocked here and written to `clock_file`.
    Defined in the benchmark's `__main__`, so Ray ships this class to the actor by value."""
    import ray

    from harness.flight import CellSearcher

    class WarmStartedSearcher(CellSearcher.__ray_actor_class__):
        def search(self, *args: Any) -> tuple:
            import ray.tune
            from ray.tune.search.optuna import OptunaSearch

            import harness.search
            from harness.pool import WorkerPool

            harness.search.OptunaSearch = functools.partial(OptunaSearch, points_to_evaluate=points)
            clock = Clock(t0)
            for owner, name in [(harness.search, "run_cell"), (ray.tune.Tuner, "fit"), (WorkerPool, "run_all")]:
                clock.wrap(owner, name)
            try:
                return super().search(*args)
            finally:  # one file per cell's searcher; the phases span them all
                clock_file.with_name(f"{clock_file.stem}-{os.getpid()}-{id(self)}.json").write_text(
                    json.dumps(clock.calls))

    return ray.remote(num_cpus=0)(WarmStartedSearcher)


def run_sdm(opts: argparse.Namespace, grid: list[dict[str, Any]], workdir: Path, clock: Clock) -> dict[str, Any]:
    os.environ["SDM_CACHE_DIR"] = str(workdir / "cache")  # a fresh cache: the defense weights are made once
    import harness.data.prepare
    import harness.flight
    import harness.models
    import harness.runner
    from harness.config import ExperimentConfig
    from harness.pool import WorkerPool
    from harness.results import read_trials

    keys = searched(grid)
    # So this side trains exactly the configurations the Trainer side trains.
    searcher_clock = workdir / "searcher-clock.json"
    harness.flight.CellSearcher = warm_started_searcher([{k: c[k] for k in keys} for c in grid], clock.t0,
                                                        searcher_clock)
    for owner, name in [(harness.data.prepare, "prepare_data"), (harness.runner, "start_ray"),
                        (harness.models, "base_fingerprint"), (WorkerPool, "__init__")]:
        clock.wrap(owner, name)
    cfg = ExperimentConfig.model_validate(experiment(opts, grid, workdir / "run"))
    summary = harness.runner.run_experiment(cfg, origin="attack_throughput")
    end = clock.now()
    if summary.failed:
        raise RuntimeError(f"sdm run failed: {summary.failed}")
    for file in workdir.glob(f"{searcher_clock.stem}-*.json"):  # the cells' searchers: first start, last end
        for name, (start, stop) in json.loads(file.read_text()).items():
            first, last = clock.calls.get(name, (start, stop))
            clock.calls[name] = (min(first, start), max(last, stop))

    marks = [0.0]
    for _, mark in SDM_PHASES:
        if mark is None:
            marks.append(end)
        else:
            start, stop = clock.calls.get(mark[:-1], (marks[-1], marks[-1]))  # a phase that did not run is empty
            marks.append(start if mark.endswith(">") else stop)
    phases = {name: b - a for (name, _), a, b in zip(SDM_PHASES, marks, marks[1:])}
    if opts.cells > 1:  # the cells' searches and reruns overlap: one phase, from the first cell's start to the last end
        names = [name for name, _ in SDM_PHASES]
        per_cell = names[names.index("Tuner setup"):names.index("rerun (not in the grid)") + 1]
        overlapping = sum(phases.pop(name) for name in per_cell)
        shutdown = phases.pop(SDM_PHASES[-1][0])
        phases.update({CELLS_PHASE: overlapping, SDM_PHASES[-1][0]: shutdown})

    # Rows come in the order Tune created the trials, cell by cell; the first `concurrent` ran on fresh workers.
    every = [r for r in read_trials(cfg.run_dir()).to_pylist() if r["phase"] == "search"]
    trials = []
    for cell_id in sorted({r["cell_id"] for r in every}):
        rows = [r for r in every if r["cell_id"] == cell_id]
        trained = [{k: json.loads(r["hyperparameters"])[k] for k in keys} for r in rows]
        if trained != [{k: c[k] for k in keys} for c in grid] or any(r["status"] != "ok" for r in rows):
            raise RuntimeError(f"{cell_id} did not train the grid: {trained}, {[r['status'] for r in rows]}")
        trials += [{"mode": config["mode"], "compute": row["wall_seconds"], "val_accuracy": row["val_accuracy"]}
                   for config, row in zip(grid, rows)]
    if len(trials) != opts.cells * len(grid):
        raise RuntimeError(f"{len(trials)} search trials, not {opts.cells} cells of {len(grid)}")
    # One cell: its rerun follows its search and is left out. Several: the reruns overlap other cells' searches.
    rerun = phases["rerun (not in the grid)"] if opts.cells == 1 else 0.0
    return {
        "wall": end - rerun,
        "search_wall": phases["search: Tuner.fit" if opts.cells == 1 else CELLS_PHASE],
        "slots": opts.concurrent,
        # The driver encodes frozen features with every core while the workers wait: compute on every slot.
        "extra_compute": opts.concurrent * phases["frozen features, payload put"],
        "trials": trials,
        "phases": phases,
        "calls": clock.calls,
    }


# -- the Trainer side --------------------------------------------------------------------------------------------------
def run_trainer(opts: argparse.Namespace, grid: list[dict[str, Any]], workdir: Path, clock: Clock) -> dict[str, Any]:
    import numpy as np
    import optuna
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.modeling_outputs import SequenceClassifierOutput

    from harness.classifier import Classifier
    from harness.config import ExperimentConfig
    from harness.models import build_encoder, load_tokenizer
    from harness.data.prepare import prepare_data

    if opts.trainer_threads:
        torch.set_num_threads(opts.trainer_threads)
    cfg = ExperimentConfig.model_validate(experiment(opts, grid, workdir / "run"))
    task = cfg.tasks.harmful
    num_labels = cfg.data.labels[task]
    # The rows sdm-bench's cells train and validate on (same sampling code, same seeds).
    prepared = prepare_data(cfg)

    def dataset(split: Any) -> Dataset:
        ids = [split.ids[a:b].tolist() for a, b in zip(split.offsets[:-1], split.offsets[1:])]
        return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids],
                                  "labels": split.labels[task].tolist()})

    class TrainerClassifier(torch.nn.Module):
        """The same Classifier, with the (loss, logits) output Trainer expects."""

        def __init__(self, classifier: Classifier):
            super().__init__()
            self.classifier = classifier

        def forward(self, input_ids, attention_mask, labels=None):  # noqa: ANN001 - Trainer's batch keys
            logits = self.classifier(input_ids, attention_mask)
            loss = None if labels is None else torch.nn.functional.cross_entropy(logits, labels)
            return SequenceClassifierOutput(loss=loss, logits=logits)

    choices = list(range(len(grid)))
    order: list[int] = []  # the grid index of each trial, in the order GridSampler visits them

    def config_of(trial: optuna.Trial) -> dict[str, Any]:
        # Trainer calls model_init before hp_space; Optuna returns the same value when a trial asks twice.
        return grid[trial.suggest_categorical("config", choices)]

    def hp_space(trial: optuna.Trial) -> dict[str, Any]:
        config = config_of(trial)
        order.append(trial.params["config"])  # hp_space runs once per trial
        return {"learning_rate": config["lr"], "max_steps": config["steps"],
                "per_device_train_batch_size": config["batch_size"]}

    def model_init(trial: optuna.Trial | None) -> torch.nn.Module:
        model = Classifier(build_encoder(cfg.model), num_labels, cfg.model.pooling)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0  # sdm-bench trains attacks without dropout (harness.training.fit)
        if trial is not None and config_of(trial)["mode"] == "probe":
            model.encoder.requires_grad_(False)
        return TrainerClassifier(model)

    class ComputeClock(TrainerCallback):
        """Time inside each trial's training loop and evaluation."""

        def __init__(self) -> None:
            self.trials: list[dict[str, Any]] = []

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer's callback signature
            self.started = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.trials.append({"compute": time.perf_counter() - self.started})

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # noqa: ANN001
            self.trials[-1]["compute"] += metrics["eval_runtime"]
            self.trials[-1]["val_accuracy"] = metrics["eval_accuracy"]

    def accuracy(prediction: Any) -> dict[str, float]:
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    compute = ComputeClock()
    args = TrainingArguments(
        output_dir=str(workdir / "trainer"),
        use_cpu=True,
        bf16=opts.precision == "bf16",  # CPU autocast to bf16 with float32 weights, as sdm-bench's bf16 trials
        max_steps=1,  # set per trial by hp_space
        lr_scheduler_type="constant",
        weight_decay=0.0,
        per_device_eval_batch_size=EVAL_BATCH,
        # Every step a full batch, as sdm-bench's sampled batches are: else an epoch of 100 rows ends in a batch of
        # 4 (at 48: one step in three), and Trainer's trials would train fewer examples for the same steps.
        dataloader_drop_last=True,
        eval_strategy="no",  # one evaluation after training, as sdm-bench's trials do
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=SEED,
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tokenizer = load_tokenizer(cfg.model)
    search_start = clock.now()
    for seed in cfg.seeds:  # one search per cell, one after the other, as a loop over a plan would run them
        train = prepared.attack_pool.subset(prepared.budget_rows[(task, seed)][opts.budget])
        trainer = Trainer(model_init=model_init, args=args, train_dataset=dataset(train),
                          eval_dataset=dataset(prepared.val), processing_class=tokenizer,
                          compute_metrics=accuracy, callbacks=[compute])
        trainer.hyperparameter_search(
            backend="optuna", direction="maximize", n_trials=len(grid), hp_space=hp_space,
            compute_objective=lambda metrics: metrics["eval_accuracy"],
            sampler=optuna.samplers.GridSampler({"config": choices}, seed=0),
        )
    end = clock.now()
    if sorted(order) != sorted(choices * len(cfg.seeds)):
        raise RuntimeError(f"the searches did not train each configuration once a cell: {order}")
    for trial, index in zip(compute.trials, order, strict=True):
        trial["mode"] = grid[index]["mode"]
    return {"wall": end, "search_wall": end - search_start, "slots": 1, "extra_compute": 0.0,
            "threads": torch.get_num_threads(),
            "trials": compute.trials, "phases": {"setup": search_start, "hyperparameter_search": end - search_start}}


# -- driver: one process per side, then the report ---------------------------------------------------------------------
SIDES = {"sdm": run_sdm, "trainer": run_trainer}
LABELS = {"sdm": "sdm-bench", "trainer": "Trainer + Optuna"}


def child(side: str, spec_path: Path, result_path: Path) -> None:
    clock = Clock()  # before the side's heavy imports: a user's process pays them too
    spec = json.loads(spec_path.read_text())
    opts = argparse.Namespace(**spec["opts"])
    result = SIDES[side](opts, spec["grid"], Path(spec["workdir"]), clock)
    result_path.write_text(json.dumps(result))


def run_side(side: str, opts: argparse.Namespace, grid: list[dict[str, Any]], workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    spec, result, log = workdir / "spec.json", workdir / "result.json", workdir / "log.txt"
    spec.write_text(json.dumps({"opts": vars(opts), "grid": grid, "workdir": str(workdir)}, default=str))
    load_before = os.getloadavg()
    with log.open("w") as out, CpuLedger() as cpu:
        code = subprocess.call([sys.executable, __file__, "--child", side, str(spec), str(result)],
                               stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    if code != 0:
        sys.exit(f"{side} side failed (exit {code}); last lines of {log}:\n" + "".join(log.open().readlines()[-30:]))
    return {**json.loads(result.read_text()), "load": (load_before, os.getloadavg()),
            "cpu": {"wall": cpu.wall, "by_kind": cpu.by_kind()}}


def summarise(r: dict[str, Any]) -> dict[str, Any]:
    trial_compute = sum(t["compute"] for t in r["trials"])
    compute = trial_compute + r["extra_compute"]
    n = len(r["trials"])
    return {
        "n": n,
        "end to end": (r["wall"], compute, 1 - compute / (r["slots"] * r["wall"])),
        "search only": (r["search_wall"], trial_compute, 1 - trial_compute / (r["slots"] * r["search_wall"])),
    }


def report(opts: argparse.Namespace, results: dict[str, dict[str, dict[str, Any]]]) -> str:
    import platform

    import torch
    import transformers
    import ray

    trainer_threads = next(iter(results.values()))["trainer"]["threads"]
    label = {**LABELS, "trainer": f"Trainer + Optuna, {trainer_threads} thread{'s' * (trainer_threads > 1)}"}
    lines = ["| grid | side | trials | measure | wall s | trials / hour | compute s | slots | overhead | "
             "trials / hour vs Trainer |", "|---|---|---|---|---|---|---|---|---|---|"]
    for kind, sides in results.items():
        summaries = {side: summarise(r) for side, r in sides.items()}
        for measure in ("end to end", "search only"):
            base = summaries["trainer"]["n"] / summaries["trainer"][measure][0]
            for side in ("sdm", "trainer"):
                s = summaries[side]
                wall, compute, overhead = s[measure]
                # several cells: sdm-bench's search phase also holds the reruns and replays that overlap it
                shown = measure if opts.cells == 1 or measure != "search only" else "searches (sdm: with reruns)"
                lines.append(f"| {kind} | {label[side]} | {s['n']} | {shown} | {wall:.0f} | "
                             f"{3600 * s['n'] / wall:.0f} | {compute:.0f} | {sides[side]['slots']} | "
                             f"{overhead:.0%} | {s['n'] / wall / base:.2f}x |")
    lines += ["", "Compute per trial, mean seconds (trials); the first trial on each of a side's slots apart:", "",
              "| grid | side | probe | full | first trial per slot |", "|---|---|---|---|---|"]
    for kind, sides in results.items():
        for side in ("sdm", "trainer"):
            r = sides[side]
            first, rest = r["trials"][: r["slots"]], r["trials"][r["slots"]:]
            groups = [[t for t in rest if t["mode"] == mode] for mode in ("probe", "full")] + [first]
            cells = [f"{sum(t['compute'] for t in g) / len(g):.2f} ({len(g)})" if g else "-" for g in groups]
            cells[2] += " " + "/".join(t["mode"] for t in first)
            lines.append(f"| {kind} | {label[side]} | " + " | ".join(cells) + " |")
    lines += ["", "sdm-bench's phases (seconds):", "", "| phase | " + " | ".join(results) + " |",
              "|---|" + "---|" * len(results)]
    for phase in next(iter(results.values()))["sdm"]["phases"]:
        lines.append(f"| {phase} | " + " | ".join(f"{sides['sdm']['phases'][phase]:.1f}"
                                                   for sides in results.values()) + " |")
    cores = os.cpu_count() or 1
    lines += ["", f"Where the machine's CPU went while each side's process ran (every process, sampled from /proc; "
              f"share of {cores} cores x that wall time; `AttackWorker` is sdm-bench's trials, the side's own "
              "process is `attack_throughput.py`):", "",
              "| grid | side | process | processes | CPU s | share |", "|---|---|---|---|---|---|"]
    for kind, sides in results.items():
        for side in ("sdm", "trainer"):
            ledger = sides[side]["cpu"]
            capacity = cores * ledger["wall"]
            used = sum(s for _, s in ledger["by_kind"].values())
            rows = [(name, n, s) for name, (n, s) in ledger["by_kind"].items() if s >= 0.005 * capacity]
            rows.append(("idle", "", capacity - used))
            lines += [f"| {kind} | {label[side]} | {name} | {n} | {s:.1f} | {s / capacity:.0%} |" for name, n, s in rows]
    lines += ["", "Load average (1, 5, 15 min) before / after each side:", ""]
    for kind, sides in results.items():
        for side, r in sides.items():
            before, after = (" ".join(f"{x:.2f}" for x in avg) for avg in r["load"])
            lines.append(f"- {kind}, {label[side]}: {before} / {after}")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    lines += ["", f"Machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} (default "
              f"{torch.get_num_threads()} threads), transformers {transformers.__version__}, ray {ray.__version__}, "
              f"Python {platform.python_version()}. Grid: {opts.trials} trials, steps {opts.steps}, "
              f"budget {opts.budget}, encoder layers {opts.layers}, max_length {opts.max_length}, "
              f"validation rows {opts.val_size}, {opts.cells} cell{'s' * (opts.cells > 1)}, "
              f"precision {opts.precision} on both sides; "
              f"sdm-bench runs {opts.concurrent} trials at once (1 thread each), Trainer one."]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12, help="configurations in the grid")
    parser.add_argument("--grids", nargs="+", choices=["mixed", "full"], default=["mixed", "full"],
                        help="mixed: probe and full trials alternate; full: full fine-tuning only")
    parser.add_argument("--steps", type=int, nargs="+", default=[25, 50], help="training steps the grid draws from")
    parser.add_argument("--budget", type=int, default=100, help="training examples")
    parser.add_argument("--layers", type=int, default=2, help="keep the encoder's first N layers")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--val-size", type=int, default=150, help="validation rows")
    parser.add_argument("--test-size", type=int, default=300, help="test rows (sdm-bench's rerun only)")
    parser.add_argument("--concurrent", type=int, default=2, help="sdm-bench's trials at once (search.max_concurrent)")
    parser.add_argument("--trainer-threads", type=int,
                        help="torch threads of the Trainer side (default: torch's, one per core)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="both sides: fp32, or bf16 autocast with float32 weights (sdm-bench's model.precision, "
                             "Trainer's bf16=True)")
    parser.add_argument("--cells", type=int, default=1,
                        help="search the grid in this many cells (seeds): sdm-bench at once, Trainer one by one")
    parser.add_argument("--keep", type=Path, help="keep each side's results, logs and run directory here")
    opts = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="sdm-throughput-") as tmp:
        root = opts.keep or Path(tmp)
        for i, kind in enumerate(opts.grids):
            grid = make_grid(opts.trials, kind, opts.steps)
            order = ("sdm", "trainer") if i % 2 == 0 else ("trainer", "sdm")  # alternate who goes first
            results[kind] = {}
            for side in order:
                print(f"{kind} grid: {LABELS[side]} ...", file=sys.stderr, flush=True)
                results[kind][side] = run_side(side, opts, grid, root / kind / side)
    print(report(opts, results))


if __name__ == "__main__":
    main()
