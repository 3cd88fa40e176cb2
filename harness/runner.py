"""`sdm run`: config -> cells -> defended weights -> attack searches, many cells at once -> trial, curve and cell
tables.

Each stage reads only what the previous one wrote. Finished cells (their row under `cells/`, status ok) are never
recomputed; a cell recorded as failed is run again, its rows replaced; with `resume`, an interrupted cell's Tuner is
restored instead of started over. One driver at a time holds a run directory (`harness.lock`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.config import ExperimentConfig
from harness.errors import UserError
from harness.plan import plan_cells, validate_plugins

if TYPE_CHECKING:
    from harness.data.prepare import PreparedData
    from harness.results import Provenance
    from harness.pool import WorkerPool

log = logging.getLogger(__name__)

RUN_FILE = "run.json"


@dataclass
class RunSummary:
    run_dir: Path
    cells_run: int
    cells_skipped: int
    failed: list[str]  # cells of this run that ended without a result
    seconds: float
    tables: dict[str, Path] = field(default_factory=dict)
    pools: dict[str, Any] = field(default_factory=dict)  # pool name -> PoolInfo: what each stage drew its rows from


def check_run_dir(cfg: ExperimentConfig, run_dir: Path) -> None:
    """Refuse to mix another experiment's (or another config's) results into this directory."""
    from harness.atomic import TMP_MARK
    from harness.lock import HOLDER_FILE, LOCK_FILE

    marker = run_dir / RUN_FILE
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output '{run_dir}': exists and is not a directory")
    if marker.exists():
        try:
            existing = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            raise UserError(f"output '{run_dir}': {RUN_FILE} is unreadable; use another --out") from None
        if existing.get("config_hash") != cfg.content_hash():
            raise UserError(
                f"output '{run_dir}': holds results of experiment '{existing.get('experiment')}' with a different "
                f"config (hash {existing.get('config_hash')} != {cfg.content_hash()}); use another --out"
            )
    elif run_dir.exists() and any(
        p.name not in {LOCK_FILE, HOLDER_FILE} and not p.name.startswith(TMP_MARK) for p in run_dir.iterdir()
    ):
        # Only a lock (a driver killed before it wrote run.json) is ours; anything else belongs to someone else.
        raise UserError(f"output '{run_dir}': not empty and not an sdm-bench run directory; use another --out")


def _writable(run_dir: Path) -> None:
    """Create and delete a file where the run directory will be: permission bits alone mislead (root, read-only
    mounts, ACLs)."""
    import tempfile

    probe = run_dir if run_dir.exists() else next((p for p in run_dir.parents if p.exists()), Path("."))
    if not probe.is_dir():
        raise UserError(f"output '{run_dir}': '{probe}' is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise UserError(f"output '{run_dir}': directory '{probe}' is not writable ({exc.strerror})") from None


def run_experiment(
    cfg: ExperimentConfig,
    *,
    origin: str,
    address: str | None = None,
    resume: bool = False,
    console=None,
) -> RunSummary:
    from harness.console import make_console

    console = console or make_console(stderr=True)
    started = time.perf_counter()
    run_dir = cfg.run_dir()
    attacks = validate_plugins(cfg, origin)
    check_run_dir(cfg, run_dir)
    from harness.data.prepare import prepare_data

    prepared = prepare_data(cfg)  # validates data, pools and budgets before anything is written
    from harness.models import base_fingerprint

    base_fingerprint(cfg.model)  # loads the base weights (cached for the run): a model that cannot load fails here
    _writable(run_dir)
    from harness.lock import RunLock

    with RunLock(run_dir) as lock:
        if lock.previous is not None:
            gone = lock.previous.describe()
            console.print(f"taking over the lock of a run that stopped without releasing it: {gone}")
        # Checked again under the lock: another driver may have written here since the checks above.
        check_run_dir(cfg, run_dir)
        plan = plan_cells(cfg, run_dir)
        if not plan.todo:
            from harness.results import write_run_tables

            return RunSummary(run_dir, 0, len(plan.cells), [], time.perf_counter() - started,
                              write_run_tables(run_dir), prepared.pools)
        return _execute(cfg, plan, prepared, attacks, run_dir, address, resume, console, started)


def start_ray(cfg: ExperimentConfig, address: str | None) -> None:
    """Join the cluster at `address` (or the config's, or RAY_ADDRESS), else start a local instance of our own; then
    refuse the run if a defense training or a trial worker fits on none of its nodes (it would wait forever)."""
    from harness.console import quiet_libraries, quiet_process

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune's own Ctrl+C handler ends a search quietly and returns its trials as if it were done: the cell would be
    # recorded from part of its search and the run would go on to the next. Without it, Ctrl+C stops the run; the
    # interrupted cell is left unrecorded, with its search's last saved state for --resume.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    quiet_process()
    import optuna
    import ray

    from harness.resources import check_requests, live_nodes, running_cluster

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    quiet_libraries()

    address = address or cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    hint = ""
    # Every worker process, on every node, sets the same quiet before its first task.
    options = {"logging_level": logging.WARNING, "log_to_driver": True,
               "runtime_env": {"worker_process_setup_hook": "harness.console.quiet_worker"}}
    if ray.is_initialized():
        where = "the connected Ray cluster"
    elif address:
        ray.init(address=address, **options)
        where = f"the Ray cluster at {address}"
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # Looked for first: the instance started below is found there too.
        running = running_cluster()
        # address="local": a new instance of our own. With no address, ray.init joins the latest instance another
        # process started on this machine, whose workers lack this process's environment (PYTHONPATH, plugins)
        # and die with it.
        ray.init(address="local", include_dashboard=False, **options)
        where = "this machine's Ray instance"
        if running:
            hint = f"; a Ray cluster is running on this machine ({running}): to run on it, add --address auto"
    check_requests(cfg, live_nodes(), where, hint)


def _execute(cfg, plan, prepared, attacks, run_dir, address, resume, console, started) -> RunSummary:
    """Train (or find) each defense a cell still needs, then search the unfinished cells, many at once."""
    import ray

    from harness.console import TrialsBar, make_progress
    from harness.cells import CellJobs, record_cell
    from harness.flight import search_cells
    from harness.progress import ProgressBoard
    from harness.resources import on_this_node
    from harness.results import write_run_tables
    from harness.search import tune_dir
    from harness.trainings import Trainings

    start_ray(cfg, address)  # first: it may still refuse the config, and nothing is written yet
    _open_run_dir(cfg, run_dir)
    storage = tune_dir(cfg, run_dir)
    stamp = run_provenance(cfg, prepared)
    todo = plan.todo
    summary = RunSummary(run_dir, 0, len(plan.cells) - len(todo), [], 0.0, pools=prepared.pools)
    seed_for = cfg.defense_training.seed_for
    pool = trainings = None
    board = ProgressBoard.options(scheduling_strategy=on_this_node()).remote()
    try:
        with make_progress(console) as progress:
            cells_bar = progress.add_task("cells", total=len(plan.cells), completed=summary.cells_skipped)
            # At most trials_per_cell a cell; a plateau stop uses fewer, and the bar's end moves in to match.
            trials = TrialsBar(progress, len(todo) * plan.trials_per_cell)
            # Per-seed defenses: each cell seed attacks a defense trained with that seed (`seeding: shared`: seed 0).
            # The trial workers start once every training has begun: they hold their resources for the whole run,
            # and a training still waiting for a GPU they held would wait forever. A defense's cells start as soon
            # as its training ends.
            trainings = Trainings(cfg, list(dict.fromkeys((c.defense, seed_for(c.seed)) for c in todo)), prepared,
                                  progress)
            trainings.wait_until_all_begun()
            pool, at_once = _start_pool(cfg, len(todo))

            def record(job, outcome) -> None:
                status = record_cell(run_dir, job.cell, job.context, outcome, storage)
                trials.end(job.cell.cell_id, len(outcome[0]), plan.trials_per_cell)
                summary.cells_run += 1
                if status != "ok":
                    summary.failed.append(job.cell.cell_id)
                progress.advance(cells_bar)

            jobs = CellJobs(cfg, todo, trainings, prepared, attacks, stamp, pool)
            search_cells(jobs, at_once, cfg=cfg, pool=pool, storage=storage, resume=resume, board=board,
                         on_start=lambda cell: trials.start(cell.cell_id),
                         on_trials=lambda cell, n: trials.advance(cell.cell_id, n), on_result=record)
    finally:
        if pool is not None:
            pool.shutdown()
        if trainings is not None:
            trainings.close()
        ray.kill(board)
    summary.tables = write_run_tables(run_dir)
    summary.seconds = time.perf_counter() - started
    return summary


def _open_run_dir(cfg: ExperimentConfig, run_dir: Path) -> None:
    """The run directory, cleared of a killed writer's temporary files, with the config it holds results of."""
    from harness.atomic import clean_leftovers, write_text_atomic

    run_dir.mkdir(parents=True, exist_ok=True)
    clean_leftovers(run_dir)
    write_text_atomic(
        run_dir / RUN_FILE,
        json.dumps({"experiment": cfg.experiment, "config_hash": cfg.content_hash(),
                    "config": cfg.model_dump(mode="json")}, indent=2),
    )


def run_provenance(cfg: ExperimentConfig, prepared: PreparedData) -> Provenance:
    """What every row of this run records about the code, libraries, model, data and machine that produced it.

    Its hardware and precision are the driver's (its CPU); a row of trials replaces them with what its trials' workers
    ran on (`Provenance.ran_on`), so only a row without a trial that reported back keeps them."""
    from harness.models import base_fingerprint, model_id
    from harness.provenance import provenance
    from harness.training import resolve_precision

    return provenance(
        precision=resolve_precision(cfg.model.precision, "cpu"),
        experiment=cfg.experiment,
        config_hash=cfg.content_hash(),
        model_id=model_id(cfg.model),
        model_fingerprint=base_fingerprint(cfg.model),
        defense_fingerprint=None,
        data_id=prepared.corpus_source,
        data_fingerprint=prepared.fingerprint,
    )


def _start_pool(cfg: ExperimentConfig, cells: int) -> tuple[WorkerPool, int]:
    """The trial workers, as many as the cluster holds at once (at most `search.max_concurrent` a cell in flight),
    and how many of the `cells` to search at once."""
    from harness.flight import payload_slots
    from harness.resources import cells_at_once, live_nodes, pool_size
    from harness.pool import WorkerPool

    size = pool_size(cfg, live_nodes(), cells)
    if size == 0:  # checked at the start; the nodes that had room have left since
        raise RuntimeError(f"no node of the Ray cluster has room for a trial worker "
                           f"(search.resources_per_trial {cfg.search.resources_per_trial})")
    at_once = cells_at_once(cfg.cluster.cells_at_once, size, cfg.search.max_concurrent, cells)
    return WorkerPool(size, cfg.search.resources_per_trial, cfg.search.fault_injection, payload_slots(at_once)), at_once


