"""The Ray Tune trial: a light proxy that hands its configuration to a persistent attack worker.

Tune starts fresh trial actors for every cell's Tuner. Importing torch and transformers in each of them would cost
seconds per cell on a laptop, so this module imports nothing heavy: the work runs in `harness.workers.AttackWorker`
actors that live for the whole run, keep their imports and cache the cell's payload from the object store. Tune still
schedules, stops, retries and records every trial; CPUs are reserved by these proxies, GPUs by the workers.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import ray
from ray import tune
from ray.exceptions import ActorDiedError, ActorUnavailableError

METRIC = "val_accuracy"


def config_json(config: dict[str, Any]) -> str:
    """Canonical JSON of a trial's hyperparameters (also what the trials table stores)."""
    return json.dumps(config, sort_keys=True, default=float)


def derive_seed(*parts: Any) -> int:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def proxy_trial(config: dict[str, Any], holder: list, cell_seed: int, workers: Any, replace_worker: Any) -> None:
    """Run one search trial on a free worker and report its validation accuracy."""
    seed = derive_seed(cell_seed, config_json(config))
    worker = workers.get()  # blocks until a worker is free
    try:
        result = ray.get(worker.run.remote(holder, config, seed, False))
    except (ActorDiedError, ActorUnavailableError):
        worker = replace_worker()  # e.g. killed for memory: the trial fails (and is retried), the pool heals
        raise
    finally:
        workers.put(worker)
    tune.report({METRIC: result["val_accuracy"], "steps_run": result["steps_run"], "best_step": result["best_step"],
                 "trial_seed": seed, "compute_seconds": result["seconds"]})
