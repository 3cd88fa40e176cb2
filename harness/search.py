"""One cell's attack search on Ray Tune: seeded TPE behind a concurrency limit, a plateau stop, then reruns.

The attacker selects hyperparameters on the validation split only; the selected configuration is rerun with fresh
seeds and scored on the held-out test split, which no search trial evaluates. With `search.asha`, Tune's ASHA
scheduler stops poor trials on their validation checks, and their workers stop training at once (`WorkerPool.stop`).

Besides the trials, a cell's search records its curves (every trial's validation checks; the reruns' validation and
test checks) and diagnostics of its own convergence (`search_diagnostics`): the best validation accuracy so far
against the trial index, which trial gave the best, whether it came in the last quarter of the trials (the search
was still improving), and whether the selected configuration sits at an edge of the space (a searched range within
EDGE_FRACTION of a bound). Either means the attacker wanted more search, and the leaderboard says so.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune import Stopper
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from harness.config import ExperimentConfig, SearchConfig
from harness.plan import Cell, max_steps
from harness.results import CellResult, CurvePoint, TrialResult
from harness.plugins import Attack
from harness.space import Fixed, IntRange, LogUniform, Space, Uniform, to_tune
from harness.tracking import tracking_callbacks
from harness.trial import CHECK, FINAL, METRIC, config_json, derive_seed, proxy_trial, trial_seed
from harness.workers import CellPayload, WorkerPool

log = logging.getLogger(__name__)

EDGE_FRACTION = 0.1  # a selected value this close to a bound (as a fraction of the range) is at the space's edge
LATE_FRACTION = 0.75  # a best found after this fraction of the trials means the search was still improving


# -- driver side ----------------------------------------------------------------------------------------------------
class PlateauStopper(Stopper):
    """Stop the search after `patience` finished trials without a new best validation accuracy.

    Only a trial's final result counts (its validation checks before are progress, not a trial's outcome), and
    each trial counts once: Tune also calls stoppers with a function trainable's closing (done) result, which
    repeats the last metrics. A trial ASHA cuts short has no final result and does not count.
    """

    def __init__(self, patience: int):
        self.patience = patience
        self.best = float("-inf")
        self.since_best = 0
        self.seen: set[str] = set()

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        value = result.get(METRIC)
        if value is None or not result.get(FINAL) or trial_id in self.seen:
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


class _StopCutTrials(tune.Callback):
    """Stops the worker of a trial the scheduler ended early: Tune ends the trial's proxy, not the worker's training.

    Pickled with the Tuner's state without the pool (actor handles do not outlive the run); a restored search
    leaves the trials it cuts to finish on their workers, and `WorkerPool.settle` still stops any left after it.
    """

    def __init__(self, pool: WorkerPool):
        self.pool: WorkerPool | None = pool

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.pool = None

    def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001 - Ray's signature
        if self.pool is not None and not (trial.last_result or {}).get(FINAL):
            self.pool.stop(trial.trial_id)


def asha_scheduler(search: SearchConfig, attack: Attack) -> ASHAScheduler | None:
    if search.asha is None:
        return None
    # Rungs are counted in training steps; no trial runs past the most steps the space can draw.
    return ASHAScheduler(time_attr="step", max_t=max_steps(attack), grace_period=search.asha.grace_period,
                         reduction_factor=search.asha.reduction_factor)


def tune_dir(cfg: ExperimentConfig, run_dir: Path) -> str:
    if cfg.cluster.storage_path:
        # The config hash keeps another config of the same experiment from restoring (or discarding) these searches.
        base, name = cfg.cluster.storage_path.rstrip("/"), f"{cfg.experiment}-{cfg.content_hash()}"
        return f"{base}/{name}" if "://" in base else str(Path(base, name).resolve())
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
) -> tuple[list[TrialResult], CellResult, list[CurvePoint]]:
    """Search, rerun and score one cell: its trials', its own results and its curves (the runner adds key, origin,
    provenance)."""
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
    experiment_path = search_path(storage, cell)
    # A cell's search state exists only while the cell is unfinished (`discard_search` runs once it is recorded).
    if resume and tune.Tuner.can_restore(experiment_path):
        log.info("restoring the interrupted search of %s", cell.cell_id)
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_errored=False, restart_errored=False)
    else:
        discard_search(storage, cell)
        searcher = OptunaSearch(seed=derive_seed(cell.cell_id, "tpe"))
        tuner = tune.Tuner(
            trainable,
            param_space={**to_tune(searched), **fixed},
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode="max",
                search_alg=ConcurrencyLimiter(searcher, max_concurrent=search.max_concurrent),
                num_samples=search.num_samples,
                scheduler=asha_scheduler(search, payload.attack),
                reuse_actors=True,
                trial_dirname_creator=lambda trial: trial.trial_id,
            ),
            run_config=tune.RunConfig(
                name=cell.cell_id,
                storage_path=storage,
                stop=PlateauStopper(search.plateau_patience),
                failure_config=tune.FailureConfig(max_failures=search.max_failures),
                callbacks=[_TrialCounter(on_trial), _StopCutTrials(pool),
                           *tracking_callbacks(cfg.tracking, cfg.experiment, cell)],
                verbose=0,
            ),
        )
    grid = tuner.fit()
    steps_ran = pool.settle()  # trials still training when the search ended stop now
    rows: list[TrialResult] = []
    configs: list[dict[str, Any]] = []
    curves: list[CurvePoint] = []
    for result in grid:
        metrics = result.metrics or {}
        config = {k: v for k, v in (result.config or {}).items()}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        ok = result.error is None and bool(metrics.get(FINAL))
        # No error and no final result: cut short by ASHA, or by the plateau stop ending the search. Its validation
        # accuracy is its best check before the cut, its steps those its worker ran; selection never picks it.
        status = "ok" if ok else ("error" if result.error is not None else "stopped")
        configs.append(config)
        curves += [CurvePoint(trial_id, "search", step, "validation", accuracy)
                   for step, accuracy in _search_checks(result, ok)]
        rows.append(TrialResult(
            phase="search",
            trial_id=trial_id,
            trial_seed=trial_seed(cell.seed, config),  # also for failed trials: enough to reproduce one
            hyperparameters=config_json(config),
            val_accuracy=metrics.get(METRIC) if status != "error" else None,
            test_accuracy=None,
            steps_run=metrics.get("steps_run") if ok else steps_ran.get(trial_id),
            best_step=metrics.get("best_step"),
            status=status,
            error=_error_text(result.error) if status == "error" else None,
            wall_seconds=metrics.get("compute_seconds"),
            node_id=metrics.get("node_id"),
        ))
    good = [i for i, r in enumerate(rows) if r.status == "ok"]
    counts = {"selection": search.selection, "n_trials": len(rows), "n_failed": sum(r.status == "error" for r in rows)}
    if not good:
        return rows, CellResult(status="failed", n_reruns=0, wall_seconds=time.perf_counter() - started,
                                **counts), curves
    # Ties go to the earliest trial, so selection does not depend on the order results came back in.
    best_index = max(good, key=lambda i: (rows[i].val_accuracy, -i))
    best = rows[best_index]
    diagnostics = search_diagnostics(rows, best_index, searched, configs[best_index])
    seeds = [derive_seed(cell.cell_id, "rerun", i) for i in range(search.reruns)]
    # Reruns get the search trials' retries; one that still fails leaves the cell without its test estimate, which
    # is defined over all `reruns` seeds: the cell is failed rather than reported over fewer.
    outcomes = pool.run_all(holder, [(configs[best_index], seed) for seed in seeds], True, search.max_failures + 1)
    reruns = []
    for i, (seed, outcome) in enumerate(zip(seeds, outcomes)):
        ok = isinstance(outcome, dict)
        if ok:
            curves += [CurvePoint(f"rerun-{i}", "rerun", step, split, accuracy)
                       for split, key in (("validation", "val_curve"), ("test", "test_curve"))
                       for step, accuracy in outcome.get(key, [])]
        reruns.append(TrialResult(
            phase="rerun",
            trial_id=f"rerun-{i}",
            trial_seed=seed,
            hyperparameters=best.hyperparameters,
            val_accuracy=outcome["val_accuracy"] if ok else None,
            test_accuracy=outcome["test_accuracy"] if ok else None,
            steps_run=outcome["steps_run"] if ok else None,
            best_step=outcome["best_step"] if ok else None,
            status="ok" if ok else "error",
            error=None if ok else _error_text(outcome),
            wall_seconds=outcome["seconds"] if ok else None,
            node_id=outcome["node_id"] if ok else None,
        ))
        on_trial()
    tests = [r.test_accuracy for r in reruns if r.status == "ok"]
    complete = len(tests) == len(reruns)
    return rows + reruns, CellResult(
        status="ok" if complete else "failed",
        n_reruns=len(tests),
        wall_seconds=time.perf_counter() - started,
        best_hyperparameters=best.hyperparameters,
        best_val_accuracy=best.val_accuracy,
        test_accuracy=statistics.fmean(tests) if complete else None,
        test_accuracy_std=(statistics.stdev(tests) if len(tests) > 1 else 0.0) if complete else None,
        **diagnostics,
        **counts,
    ), curves


# -- search diagnostics: did the attacker's search converge? -------------------------------------------------------
def best_so_far(values: list[float | None]) -> list[float | None]:
    """The running best of `values` (None: a trial without a successful result, which keeps the best before it)."""
    out: list[float | None] = []
    best: float | None = None
    for value in values:
        if value is not None and (best is None or value > best):
            best = value
        out.append(best)
    return out


def still_improving(best_index: int, n_trials: int) -> bool:
    """Whether the selected trial (0-based `best_index` of `n_trials`) came in the last quarter of the trials: its
    1-based number is above LATE_FRACTION of the count (of 4 trials the 4th, of 50 the 38th to 50th; a single
    trial is always late: there was no search to converge)."""
    return best_index + 1 > LATE_FRACTION * n_trials


def edge_position(dim: Any, value: Any) -> float | None:
    """Where `value` sits in a searched range, 0 at its low bound and 1 at its high one: in log space for a
    log-uniform (or log int) range, linearly for the others. None for a choice, a fixed value or an empty range."""
    if not isinstance(dim, (LogUniform, Uniform, IntRange)) or dim.high <= dim.low or value is None:
        return None
    if isinstance(dim, LogUniform) or (isinstance(dim, IntRange) and dim.log and dim.low > 0):
        return (math.log(value) - math.log(dim.low)) / (math.log(dim.high) - math.log(dim.low))
    return (float(value) - dim.low) / (dim.high - dim.low)


def search_edges(space: Space, config: dict[str, Any], fraction: float = EDGE_FRACTION) -> list[str]:
    """The searched numeric dimensions whose selected value lies within `fraction` of a bound, as "name:low" or
    "name:high", in the space's order. Choices (e.g. batch size) are not ranges and are not checked."""
    edges = []
    for name, dim in space.items():
        position = edge_position(dim, config.get(name))
        if position is None:
            continue
        if position <= fraction:
            edges.append(f"{name}:low")
        elif position >= 1 - fraction:
            edges.append(f"{name}:high")
    return edges


def search_diagnostics(rows: list[TrialResult], best_index: int, space: Space, config: dict[str, Any]) -> dict:
    """The cell row's `search_*` fields: `rows` are the search trials in the order Tune lists them (the order it
    created them, except that a trial retried after a failure moves to the end: it ran again there), `best_index`
    the selected one, `space` the searched dimensions and `config` the selected configuration."""
    curve = best_so_far([r.val_accuracy if r.status == "ok" else None for r in rows])
    edges = search_edges(space, config)
    return {
        "search_best_so_far": json.dumps(curve),
        "search_best_trial": best_index,
        "search_still_improving": still_improving(best_index, len(rows)),
        "search_at_edge": bool(edges),
        "search_edges": ",".join(edges),
    }


def _search_checks(result: Any, ok: bool) -> list[tuple[int, float]]:
    """A search trial's validation checks as (step, accuracy), from the results its proxy reported to Tune (a trial
    cut short has only these); without any (no `eval_every`), its final result is its one check."""
    checks: dict[int, float] = {}
    frame = getattr(result, "metrics_dataframe", None)
    if frame is not None and CHECK in frame.columns and "step" in frame.columns:
        for step, accuracy in zip(frame["step"], frame[CHECK]):
            if accuracy == accuracy and step == step:  # not NaN: an intermediate result
                checks.setdefault(int(step), float(accuracy))  # Tune's closing result repeats the last one
    metrics = result.metrics or {}
    if not checks and ok and metrics.get("steps_run") is not None and metrics.get(METRIC) is not None:
        checks[int(metrics["steps_run"])] = float(metrics[METRIC])
    return sorted(checks.items())


def search_path(storage: str, cell: Cell) -> str:
    """Where a cell's Ray Tune state lives: a local folder or a storage URI."""
    return f"{storage}/{cell.cell_id}" if "://" in storage else str(Path(storage, cell.cell_id))


def discard_search(storage: str, cell: Cell) -> None:
    """Delete a cell's Tune state: before a fresh search, and once the cell's rows are written (so that `--resume`
    only ever finds searches that were interrupted, never a finished one to repeat)."""
    import pyarrow.fs as pafs

    path = search_path(storage, cell)
    filesystem, where = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    try:
        filesystem.delete_dir(where)
    except FileNotFoundError:
        pass


def _error_text(error: BaseException) -> str:
    """The original error's type and first line: Ray wraps a trial's exception, once per process it crossed."""
    while isinstance(getattr(error, "cause", None), BaseException):
        error = error.cause
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:500]
