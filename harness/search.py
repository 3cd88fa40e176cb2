"""One cell's attack search on Ray Tune: seeded TPE behind a concurrency limit, a plateau stop, then reruns.

The attacker selects hyperparameters on the validation split only; the selected configuration is rerun with fresh
seeds and scored on the held-out test split, which no search trial evaluates.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune
from ray.tune import Stopper
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from harness.config import ExperimentConfig, ModelConfig
from harness.plugins import Attack, CellData
from harness.space import Fixed, to_tune
from harness.training import Features
from harness.trial import METRIC, config_json, derive_seed, proxy_trial
from harness.workers import WorkerPool

log = logging.getLogger(__name__)


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
class CellPayload:
    """Everything a trial needs, put in the object store once per cell: no trial reads weights or data from disk."""

    model: ModelConfig
    encoder_state: dict[str, torch.Tensor]
    data: CellData
    features: Features | None
    attack: Attack
    eval_every: int
    cpus: float


# -- driver side ----------------------------------------------------------------------------------------------------
class PlateauStopper(Stopper):
    """Stop the search after `patience` finished trials without a new best validation accuracy.

    Each trial counts once: Tune also calls stoppers with a function trainable's closing (done) result, which
    repeats the last metrics and must not count as another trial without improvement.
    """

    def __init__(self, patience: int):
        self.patience = patience
        self.best = float("-inf")
        self.since_best = 0
        self.seen: set[str] = set()

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        value = result.get(METRIC)
        if value is None or trial_id in self.seen:
            return False
        self.seen.add(trial_id)
        if value > self.best:
            self.best, self.since_best = value, 0
        else:
            self.since_best += 1
        return False

    def stop_all(self) -> bool:
        return self.since_best >= self.patience


class _TrialCounter(tune.Callback):
    """Advances the driver's progress bar; pickled with the Tuner's state without it (progress is not picklable)."""

    def __init__(self, on_trial: Callable[[], None]):
        self.on_trial = on_trial

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.on_trial = lambda: None

    def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001 - Ray's signature
        self.on_trial()

    def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001
        self.on_trial()


def tune_dir(cfg: ExperimentConfig, run_dir: Path) -> str:
    if cfg.cluster.storage_path:
        base = cfg.cluster.storage_path.rstrip("/")
        return f"{base}/{cfg.experiment}" if "://" in base else str(Path(base, cfg.experiment).resolve())
    return str((run_dir / "tune").resolve())


def run_cell(
    cfg: ExperimentConfig,
    cell: Cell,
    payload: CellPayload,
    *,
    pool: WorkerPool,
    storage: str,
    resume: bool,
    on_trial: Callable[[], None] = lambda: None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Search, rerun and score one cell; returns (trial rows, cell row) without provenance columns."""
    started = time.perf_counter()
    search = cfg.search
    holder = [ray.put(payload)]
    # The proxies reserve the trial's CPUs in Tune's accounting; the pool's workers hold the GPUs.
    trainable = tune.with_resources(
        tune.with_parameters(proxy_trial, holder=holder, cell_seed=cell.seed, workers=pool.queue,
                             replace_worker=pool.replacement_factory()),
        {"cpu": search.resources_per_trial.cpu},
    )
    space = payload.attack.space
    fixed = {k: v.value for k, v in space.items() if isinstance(v, Fixed)}
    searched = {k: v for k, v in space.items() if not isinstance(v, Fixed)}
    experiment_path = f"{storage}/{cell.cell_id}" if "://" in storage else str(Path(storage, cell.cell_id))
    if resume and tune.Tuner.can_restore(experiment_path):
        log.info("restoring the interrupted search of %s", cell.cell_id)
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_errored=False, restart_errored=False)
    else:
        _discard(experiment_path)
        searcher = OptunaSearch(seed=derive_seed(cell.cell_id, "tpe"))
        tuner = tune.Tuner(
            trainable,
            param_space={**to_tune(searched), **fixed},
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode="max",
                search_alg=ConcurrencyLimiter(searcher, max_concurrent=search.max_concurrent),
                num_samples=search.num_samples,
                reuse_actors=True,
                trial_dirname_creator=lambda trial: trial.trial_id,
            ),
            run_config=tune.RunConfig(
                name=cell.cell_id,
                storage_path=storage,
                stop=PlateauStopper(search.plateau_patience),
                failure_config=tune.FailureConfig(max_failures=search.max_failures),
                callbacks=[_TrialCounter(on_trial)],
                verbose=0,
            ),
        )
    grid = tuner.fit()
    rows: list[dict[str, Any]] = []
    for result in grid:
        metrics = result.metrics or {}
        config = {k: v for k, v in (result.config or {}).items()}
        ok = result.error is None and metrics.get(METRIC) is not None
        # No error and no result: the plateau stop ended the search while this trial was still running.
        status = "ok" if ok else ("error" if result.error is not None else "stopped")
        rows.append(
            {
                "phase": "search",
                "trial_id": metrics.get("trial_id") or Path(result.path).name,
                "trial_seed": metrics.get("trial_seed"),
                "hyperparameters": config_json(config),
                "val_accuracy": metrics.get(METRIC) if ok else None,
                "test_accuracy": None,
                "steps_run": metrics.get("steps_run"),
                "best_step": metrics.get("best_step"),
                "status": status,
                "error": _error_text(result.error) if status == "error" else None,
                "wall_seconds": metrics.get("compute_seconds"),
                "_config": config,
            }
        )
    good = [r for r in rows if r["status"] == "ok"]
    cell_row: dict[str, Any] = {
        "n_trials": len(rows),
        "n_failed": sum(r["status"] == "error" for r in rows),
        "selection": search.selection,
    }
    if not good:
        cell_row.update(status="failed", n_reruns=0)
        for row in rows:
            row.pop("_config")
        cell_row["wall_seconds"] = time.perf_counter() - started
        return rows, cell_row
    # Ties go to the earliest trial, so selection does not depend on the order results came back in.
    best = max(good, key=lambda r: (r["val_accuracy"], -rows.index(r)))
    seeds = [derive_seed(cell.cell_id, "rerun", i) for i in range(search.reruns)]
    futures = [pool.handles[i % len(pool.handles)].run.remote(holder, best["_config"], seed, True)
               for i, seed in enumerate(seeds)]
    reruns = []
    for i, (seed, outcome) in enumerate(zip(seeds, ray.get(futures))):
        reruns.append(
            {
                "phase": "rerun",
                "trial_id": f"rerun-{i}",
                "trial_seed": seed,
                "hyperparameters": best["hyperparameters"],
                "val_accuracy": outcome["val_accuracy"],
                "test_accuracy": outcome["test_accuracy"],
                "steps_run": outcome["steps_run"],
                "best_step": outcome["best_step"],
                "status": "ok",
                "error": None,
                "wall_seconds": outcome["seconds"],
            }
        )
        on_trial()
    tests = [r["test_accuracy"] for r in reruns]
    cell_row.update(
        status="ok",
        best_hyperparameters=best["hyperparameters"],
        best_val_accuracy=best["val_accuracy"],
        test_accuracy=statistics.fmean(tests),
        test_accuracy_std=statistics.stdev(tests) if len(tests) > 1 else 0.0,
        n_reruns=len(reruns),
        wall_seconds=time.perf_counter() - started,
    )
    for row in rows:
        row.pop("_config")
    return rows + reruns, cell_row


def _discard(path: str) -> None:
    if "://" not in path:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


def _error_text(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    # Ray wraps the trial's exception; its last line names the original error.
    return (text[-1] if text else type(error).__name__)[:500]
