"""One cell's attack search on Ray Tune: seeded TPE in batches of `max_concurrent` trials, a plateau stop, reruns.

Many cells are searched at once (`harness.flight`), their trials sharing the run's workers; a cell's search is the
same whether it runs alone or beside others, because TPE proposes a batch only once it has heard of the whole batch
before, and the plateau stop counts trials in the order they were proposed (`PlateauSearch`). ASHA's cuts (below)
are the exception: they depend on the order the trials' checks arrive in.

The attacker selects hyperparameters on the validation split only; the selected configuration is rerun with fresh seeds
and scored on the held-out test split, which no search trial evaluates; the cell's test accuracy is the reruns' mean
(the reference's protocol). The selected trial is also replayed with its own seed and scored on test: the model the
attacker found, which the board holds against the reruns (a configuration that broke the defense on one seed of two must
not pass for a failed attack). With `search.asha`, Tune's ASHA scheduler stops poor trials on their validation checks,
and their workers stop training at once (`WorkerPool.stop`).

Besides the trials, a cell's search records its curves (every trial's validation checks; the reruns' validation and
test checks) and diagnostics of its own convergence (`harness.search_diagnostics`).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from harness.config import ExperimentConfig, SearchConfig
from harness.plan import Cell, max_steps
from harness.results import CellResult, CurvePoint, RanOn, TrialResult
from harness.plugins import Attack
from harness.search_diagnostics import search_diagnostics
from harness.space import Fixed, to_tune
from harness.tracking import tracking_callbacks
from harness.trial import CHECK, FINAL, METRIC, PROXY_RESOURCES, config_json, derive_seed, proxy_trial, trial_seed
from harness.pool import WorkerPool

log = logging.getLogger(__name__)

REPLAY = "replay"  # the phase and trial id of the selected trial's replay (`harness.plan.REPLAYS`: one a cell)


# -- driver side ----------------------------------------------------------------------------------------------------
class PlateauSearch(Searcher):
    """Wraps a searcher (TPE) to end the search after `patience` trials without a new best validation accuracy.

    Trials are counted in the order they were proposed, once every trial before them has ended, and only a trial's
    final result counts (one ASHA cut short, or one that failed, is no improvement). Behind
    `ConcurrencyLimiter(batch=True)` it hears of a whole batch of trials before it proposes the next, so what it
    proposes and when it stops depend on the trials' results alone, never on the order they came back in: a cell's
    search is the same whether it ran alone or beside many others, on one node or on many.
    """

    def __init__(self, searcher: Searcher, patience: int):
        self.searcher = searcher
        self.patience = patience
        self.proposed: list[str] = []  # trial ids, in the order their configurations were proposed
        self.ended: dict[str, float | None] = {}  # trial id -> its final validation accuracy (None: no final result)
        self.counted = 0  # how many of `proposed` the plateau count has taken in
        self.best = float("-inf")
        self.since_best = 0
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | str | None:
        self._count()
        if self.since_best >= self.patience:
            return Searcher.FINISHED
        suggestion = self.searcher.suggest(trial_id)
        if suggestion not in (None, Searcher.FINISHED):
            self.proposed.append(trial_id)
        return suggestion

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.searcher.on_trial_complete(trial_id, result=result, error=error)
        final = not error and bool((result or {}).get(FINAL))
        self.ended[trial_id] = (result or {}).get(METRIC) if final else None

    def _count(self) -> None:
        while self.counted < len(self.proposed) and self.proposed[self.counted] in self.ended:
            value = self.ended[self.proposed[self.counted]]
            if value is not None and value > self.best:
                self.best, self.since_best = value, 0
            else:
                self.since_best += 1
            self.counted += 1

    def get_state(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "searcher"}

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def cell_searcher(search: SearchConfig, cell: Cell) -> Searcher:
    """The cell's seeded TPE, in batches of `max_concurrent` trials, with the plateau stop."""
    tpe = OptunaSearch(seed=derive_seed(cell.cell_id, "tpe"))
    return ConcurrencyLimiter(PlateauSearch(tpe, search.plateau_patience), max_concurrent=search.max_concurrent,
                              batch=True)


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
            self.pool.stop([trial.trial_id])


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
    holder: list,
    attack: Attack,
    *,
    pool: WorkerPool,
    storage: str,
    resume: bool,
    on_trial: Callable[[], None] = lambda: None,
) -> tuple[list[TrialResult], CellResult, list[CurvePoint], dict[str, RanOn]]:
    """Search, rerun and score one cell (`holder`: its payload's object reference, in a list so that Ray passes it
    on as a reference): its trials, its own results, its curves, and what each trial that reported back ran on, by
    trial id (the runner adds key, origin, provenance)."""
    started = time.perf_counter()
    search = cfg.search
    # The pool's workers hold the trial's resources; a proxy only waits for its worker.
    trainable = tune.with_resources(
        tune.with_parameters(proxy_trial, holder=holder, cell_seed=cell.seed, lender=pool.lender),
        PROXY_RESOURCES,
    )
    # Tune registers a trainable by name, once for the whole Ray job: cells searched at once must not share one,
    # or a cell's trials would start with another cell's parameters (its payload). The same name on --resume.
    trainable.__name__ = f"proxy_trial_{derive_seed(cell.cell_id, 'trainable'):08x}"
    space = attack.space
    fixed = {k: v.value for k, v in space.items() if isinstance(v, Fixed)}
    searched = {k: v for k, v in space.items() if not isinstance(v, Fixed)}
    experiment_path = search_path(storage, cell)
    # A cell's search state exists only while the cell is unfinished (`discard_search` runs once it is recorded).
    if resume and tune.Tuner.can_restore(experiment_path):
        log.info("restoring the interrupted search of %s", cell.cell_id)
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_errored=False, restart_errored=False)
    else:
        discard_search(storage, cell)
        tuner = tune.Tuner(
            trainable,
            param_space={**to_tune(searched), **fixed},
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode="max",
                search_alg=cell_searcher(search, cell),
                num_samples=search.num_samples,
                scheduler=asha_scheduler(search, attack),
                reuse_actors=True,
                trial_dirname_creator=lambda trial: trial.trial_id,
            ),
            run_config=tune.RunConfig(
                name=cell.cell_id,
                storage_path=storage,
                failure_config=tune.FailureConfig(max_failures=search.max_failures),
                callbacks=[_TrialCounter(on_trial), _StopCutTrials(pool),
                           *tracking_callbacks(cfg.tracking, cfg.experiment, cell)],
                verbose=0,
            ),
        )
    grid = tuner.fit()
    # Trials still training when the search ended (ASHA cut them) stop now; their steps are what they cost.
    steps_ran = pool.settle([Path(result.path).name for result in grid])
    rows: list[TrialResult] = []
    configs: list[dict[str, Any]] = []
    curves: list[CurvePoint] = []
    ran_on: dict[str, RanOn] = {}
    for result in grid:
        metrics = result.metrics or {}
        config = {k: v for k, v in (result.config or {}).items()}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        ok = result.error is None and bool(metrics.get(FINAL))
        if ok and "hardware" in metrics:  # not in the results of a search restored from an older version
            ran_on[trial_id] = RanOn(metrics["hardware"], metrics["precision"])
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
                                **counts), curves, ran_on
    # Ties go to the earliest trial, so selection does not depend on the order results came back in.
    best_index = max(good, key=lambda i: (rows[i].val_accuracy, -i))
    best = rows[best_index]
    diagnostics = search_diagnostics(rows, best_index, searched, configs[best_index])
    seeds = [derive_seed(cell.cell_id, "rerun", i) for i in range(search.reruns)]
    # Beside the reruns, the selected trial itself is replayed with its own seed (training is deterministic), and
    # scored on test: the model the attacker found and holds, not only how reliable its configuration is.
    jobs = [(configs[best_index], seed) for seed in [*seeds, best.trial_seed]]
    # Reruns get the search trials' retries; one that still fails leaves the cell without its test estimate, which
    # is defined over all `reruns` seeds: the cell is failed rather than reported over fewer. A failed replay only
    # leaves the found model unknown.
    outcomes = pool.run_all(holder, jobs, True, search.max_failures + 1)
    reruns = []
    for i, ((_, seed), outcome) in enumerate(zip(jobs, outcomes)):
        ok = isinstance(outcome, dict)
        phase = "rerun" if i < len(seeds) else REPLAY
        trial_id = f"rerun-{i}" if phase == "rerun" else REPLAY
        if ok:
            ran_on[trial_id] = RanOn(outcome["hardware"], outcome["precision"])
        if ok and phase == "rerun":  # the replay's checks repeat the selected trial's own
            curves += [CurvePoint(trial_id, "rerun", step, split, accuracy)
                       for split, key in (("validation", "val_curve"), ("test", "test_curve"))
                       for step, accuracy in outcome.get(key, [])]
        reruns.append(TrialResult(
            phase=phase,
            trial_id=trial_id,
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
    replay = reruns.pop()
    tests = [r.test_accuracy for r in reruns if r.status == "ok"]
    complete = len(tests) == len(reruns)
    return rows + reruns + [replay], CellResult(
        status="ok" if complete else "failed",
        n_reruns=len(tests),
        wall_seconds=time.perf_counter() - started,
        best_hyperparameters=best.hyperparameters,
        best_val_accuracy=best.val_accuracy,
        test_accuracy=statistics.fmean(tests) if complete else None,
        test_accuracy_std=(statistics.stdev(tests) if len(tests) > 1 else 0.0) if complete else None,
        found_val_accuracy=replay.val_accuracy,
        found_test_accuracy=replay.test_accuracy,
        **diagnostics,
        **counts,
    ), curves, ran_on


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
