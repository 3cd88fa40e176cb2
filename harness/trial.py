"""The Ray Tune trial: a light proxy that hands its configuration to a persistent attack worker.

Tune starts fresh trial actors for every cell's Tuner. Importing torch and transformers in each of them would cost
seconds per cell on a laptop, so this module imports nothing heavy: the work runs in `harness.workers.AttackWorker`
actors that live for the whole run, keep their imports and cache the cell's payload from the object store. Tune still
schedules, stops, retries and records every trial; the workers reserve the trial's CPUs and GPUs, where they compute,
and a proxy, which only waits, reserves nothing but its process's memory (`PROXY_RESOURCES`).

A trial reports every validation check its worker publishes (the best accuracy so far, at that training step, and
the check's own accuracy for the curves table), so a scheduler such as ASHA can stop it on any of them, then a last
result marked `FINAL`. Tune ends a stopped proxy
abruptly, so the proxy cannot be trusted to stop or give back its worker: the worker gives itself back when its trial
ends, the search stops the worker's training (`WorkerPool.stop`, `WorkerPool.settle`), and the lender takes back a
worker whose proxy ended before handing it the trial.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import ray
from ray import tune
from ray.exceptions import ActorDiedError, ActorUnavailableError, ActorUnschedulableError

METRIC = "val_accuracy"
# Tune needs a trial to reserve something: a proxy's process takes about this much memory (Ray, Tune, no torch).
PROXY_RESOURCES = {"cpu": 0, "memory": 200 * 2**20}
FINAL = "final"  # set on a trial's last result only: a trial without it was cut short
CHECK = "check_accuracy"  # a validation check's accuracy, on the trial's intermediate results only
# A worker that died, or that can never start (its node is gone): the trial fails and the pool replaces the worker.
WORKER_LOST = (ActorDiedError, ActorUnavailableError, ActorUnschedulableError)


def config_json(config: dict[str, Any]) -> str:
    """Canonical JSON of a trial's hyperparameters (also what the trials table stores)."""
    return json.dumps(config, sort_keys=True, default=float)


def derive_seed(*parts: Any) -> int:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def trial_seed(cell_seed: int, config: dict[str, Any]) -> int:
    """A search trial's seed: a function of the cell and the configuration, so a retry repeats the same trial."""
    return derive_seed(cell_seed, config_json(config))


def proxy_trial(config: dict[str, Any], holder: list, cell_seed: int, lender: Any) -> None:
    """Run one search trial on a worker `lender` (`harness.pool`) lends it; report its validation checks as they
    come, then its result."""
    seed = trial_seed(cell_seed, config)
    trial_id = tune.get_context().get_trial_id()
    lease, worker = ray.get(lender.borrow.remote())  # once a worker is free; it gives itself back when it is done
    try:
        done = worker.trial.remote(holder, config, seed, trial_id, lender, lease)
        best, seen, ended = float("-inf"), 0, False
        while not ended:
            checks, ended, node_id = ray.get(worker.checks.remote(lease, seen))
            seen += len(checks)
            for step, accuracy in checks:
                best = max(best, accuracy)  # fit keeps the best checkpoint: the trial is worth its best check so far
                # CHECK: this check's own accuracy, for the curves table (METRIC: the best so far, for the scheduler)
                tune.report({METRIC: best, CHECK: accuracy, "step": step, "trial_seed": seed, "node_id": node_id})
        result = ray.get(done)
    except WORKER_LOST:
        # e.g. killed for memory, or its node left: the trial fails (and is retried), the lender starts another
        lender.lost.remote(lease)
        raise
    if result.get("stopped"):
        return  # the search stopped this trial while it was still running: nothing more to report
    tune.report({METRIC: result["val_accuracy"], "step": result["steps_run"], FINAL: True,
                 "steps_run": result["steps_run"], "best_step": result["best_step"], "trial_seed": seed,
                 "compute_seconds": result["seconds"], "node_id": result["node_id"],
                 "hardware": result["hardware"], "precision": result["precision"]})
