"""Many cells in flight: each cell's search runs in a `CellSearcher` actor beside the others'; the driver starts the
next cell as soon as one ends, and writes each cell's rows once, when its result comes back.

A cell's search (its Tuner, its trials' proxies, its reruns) runs in a searcher actor on the driver's node, where
Tune keeps the search's state for `--resume`; its trials compute on the run's shared `WorkerPool`. How many cells fly
at once is `cluster.cells_at_once`, by default enough to keep every worker busy: the workers a cell's batches fill
(`search.max_concurrent` each), plus one cell, whose Tuner starts and first batch wait while the others' run.
Searchers are reused from cell to cell, so Ray Tune and Optuna are imported once per searcher, not once per cell.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import ray
from ray.exceptions import RayActorError

from harness.plan import Cell
from harness.progress import POLL_S, BoardReporter
from harness.resources import on_this_node

PAYLOAD_SLOTS = 4  # cell payloads a worker keeps at most (weights, data, features): memory for fewer reloads
SEARCHER_RESTARTS = 1  # a cell whose searcher died is resumed on a new one this many times before the run stops


@dataclass(frozen=True)
class CellJob:
    """One cell ready to search: its payload in the object store (in a list, so Ray passes the reference on) and
    its attack; `context` is the driver's own, for recording the result."""

    cell: Cell
    holder: list
    attack: Any
    context: Any = None


def payload_slots(at_once: int) -> int:
    return min(at_once, PAYLOAD_SLOTS)


@ray.remote(num_cpus=0)
class CellSearcher:
    """Runs one cell's search at a time (`harness.search.run_cell`), reporting its trial count to the board."""

    def __init__(self, environment: dict[str, str]) -> None:
        # The driver's Tune settings, before Tune is imported: a cluster the driver joined has its own environment.
        # (Given here rather than as a runtime_env's env_vars, whose workers start through Ray's runtime-env agent
        # and outlive a killed driver's raylet by a minute.)
        os.environ.update(environment)
        import optuna

        import harness.search  # noqa: F401  (Ray Tune and Optuna: imported once per searcher, not once per cell)
        from harness.console import quiet_libraries

        # As quiet as the driver (`runner.start_ray`): Tune's controller runs here now.
        logging.getLogger("ray").setLevel(logging.WARNING)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        quiet_libraries()

    def search(self, cfg: Any, cell: Cell, holder: list, attack: Any, pool: Any, storage: str, resume: bool,
               board: Any) -> tuple:
        from harness.search import run_cell

        report = BoardReporter(board, cell.cell_id)
        done = [0]

        def on_trial() -> None:
            done[0] += 1
            report(done[0], {})

        return run_cell(cfg, cell, holder, attack, pool=pool, storage=storage, resume=resume, on_trial=on_trial)


def _new_searcher() -> Any:
    # On the driver's node: the search state is written where the driver (and a later --resume) finds it.
    from harness.console import tune_environment

    return CellSearcher.options(scheduling_strategy=on_this_node()).remote(tune_environment())


class JobSource(Protocol):
    """Where `search_cells` draws its cells from (`harness.cells.CellJobs`): `take` never waits."""

    @property
    def exhausted(self) -> bool: ...

    def take(self) -> CellJob | None: ...

    def wait(self, timeout: float) -> None: ...


def search_cells(
    jobs: JobSource,
    at_once: int,
    *,
    cfg: Any,
    pool: Any,
    storage: str,
    resume: bool,
    board: Any,
    on_start: Callable[[Cell], None],
    on_trials: Callable[[Cell, int], None],
    on_result: Callable[[CellJob, tuple], None],
) -> None:
    """Search every job's cell, `at_once` at a time, in the order `jobs` gives them (a job is drawn only when a
    searcher is free, so its payload is built just in time; while none is ready, the cells in flight go on).
    `on_trials(cell, n)`: n of its trials have ended; `on_result(job, outcome)`: what `run_cell` returned, on the
    driver, as each cell ends."""
    def _submit(searcher: Any, job: CellJob, resume_search: bool) -> Any:
        # The job's context stays on the driver: only what the search needs travels.
        return searcher.search.remote(cfg, job.cell, job.holder, job.attack, pool, storage, resume_search, board)

    searchers = [_new_searcher() for _ in range(at_once)]
    free = list(searchers)
    flying: dict[Any, tuple[CellJob, Any, int]] = {}  # search ref -> (job, its searcher, restarts so far)
    by_id: dict[str, Cell] = {}
    try:
        while True:
            while free:
                job = jobs.take()
                if job is None:
                    break
                searcher = free.pop()
                by_id[job.cell.cell_id] = job.cell
                on_start(job.cell)
                flying[_submit(searcher, job, resume)] = (job, searcher, 0)
            if not flying:
                if jobs.exhausted:
                    return
                jobs.wait(POLL_S)  # nothing in flight: the next cells wait on their defense's training
                continue
            ready, _ = ray.wait(list(flying), num_returns=1, timeout=POLL_S)
            jobs.wait(0)  # the trainings still running move their bars, and say when they end
            for cell_id, (count, _) in ray.get(board.take_all.remote()).items():
                if cell_id in by_id:
                    on_trials(by_id[cell_id], count)
            for ref in ready:
                job, searcher, restarts = flying.pop(ref)
                try:
                    outcome = ray.get(ref)
                except RayActorError:
                    if restarts >= SEARCHER_RESTARTS:
                        raise
                    # The searcher's process died (not the search: its errors are raised as they are); a new one
                    # resumes the cell from the search state the old one saved.
                    searchers.remove(searcher)
                    searcher = _new_searcher()
                    searchers.append(searcher)
                    flying[_submit(searcher, job, True)] = (job, searcher, restarts + 1)
                    continue
                free.append(searcher)
                by_id.pop(job.cell.cell_id, None)  # its trial counts still on the board are stale now
                on_result(job, outcome)
    finally:
        for searcher in searchers:
            ray.kill(searcher)  # an interrupted cell's search stops with it; its saved state stays for --resume
