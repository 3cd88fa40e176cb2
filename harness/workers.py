"""Persistent attack workers: heavy imports and each cell's payload are loaded once per worker, not once per trial."""

from __future__ import annotations

import time
from typing import Any

import ray
from ray.util.queue import Queue

from harness.config import Resources


@ray.remote(num_cpus=0)
class AttackWorker:
    """Runs attack trials and reruns; caches the current cell's payload (weights, data, features)."""

    def __init__(self, cpus: float):
        import torch

        torch.set_num_threads(max(1, int(cpus)))
        self._key: str | None = None
        self._payload: Any = None

    def run(self, holder: list, config: dict[str, Any], seed: int, score_test: bool) -> dict[str, Any]:
        import torch

        from harness.plugins import AttackContext

        started = time.perf_counter()
        ref = holder[0]
        if ref.hex() != self._key:
            self._payload, self._key = None, None  # free the previous cell's weights first
            self._payload, self._key = ray.get(ref), ref.hex()
        payload = self._payload
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        ctx = AttackContext(payload.model, payload.encoder_state, payload.data, payload.features,
                            payload.eval_every, device)
        torch.manual_seed(seed)
        outcome = payload.attack.run(ctx, config, seed, score_test)
        return {
            "val_accuracy": outcome.val_accuracy,
            "test_accuracy": outcome.test_accuracy,
            "steps_run": outcome.steps_run,
            "best_step": outcome.best_step,
            "seconds": time.perf_counter() - started,
        }


class WorkerPool:
    """`size` workers with the trial resources' GPUs, and a queue that lends them to trials one at a time."""

    def __init__(self, size: int, resources: Resources):
        self._options = {"num_gpus": resources.gpu, "scheduling_strategy": "SPREAD"}
        self._cpus = resources.cpu
        self.handles = [self._new() for _ in range(size)]
        self.queue = Queue(actor_options={"num_cpus": 0})
        for handle in self.handles:
            self.queue.put(handle)

    def _new(self) -> Any:
        return AttackWorker.options(**self._options).remote(self._cpus)

    def replacement_factory(self):
        options, cpus = self._options, self._cpus
        return lambda: AttackWorker.options(**options).remote(cpus)

    def shutdown(self) -> None:
        self.queue.shutdown(force=True)
        for handle in self.handles:
            ray.kill(handle)
