"""Persistent attack workers: heavy imports and each cell's payload are loaded once per worker, not once per trial.

Every attack outcome passes through `AttackWorker.run`, so this is where a broken one is stopped: an accuracy (its
result's or one of its curve's checks) that is not a number in [0, 1] fails the trial (which Tune then retries)
instead of reaching selection or a published mean.
It is also where `search.fault_injection` makes chosen trials fail, to prove that handling on a real run.

A worker reserves a trial's CPUs and GPUs (`search.resources_per_trial`) for the whole run and computes on the device
Ray assigned it (`harness.device`); the frozen features probes train on are computed by a worker too (`encode`), so
they come from the same device, at the same precision, as the trials' own forward passes. Ray places the workers
(SPREAD), within the resources each node has; the pool is sized to them (`harness.resources.pool_size`).
"""

from __future__ import annotations

import logging
import math
import os
import queue
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import ray
import torch
from ray.exceptions import RayError
from ray.util.queue import Empty, Queue

from harness.config import FaultInjection, ModelConfig, Resources
from harness.device import assigned_device, attention_for, hardware, prepare_device
from harness.plugins import Attack, AttackContext, CellData
from harness.resources import on_this_node
from harness.tokenized import TokenizedSplit
from harness.training import Features, resolve_precision
from harness.trial import WORKER_LOST, derive_seed

log = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """A failure `search.fault_injection` asked for."""


class InvalidOutcome(RuntimeError):
    """An attack reported an accuracy that is not a number in [0, 1]."""


class TrialStopped(Exception):
    """Raised inside a search trial's training once the search has stopped the trial (ASHA, the plateau stop)."""


@dataclass
class CellPayload:
    """Everything a trial needs, put in the object store once per cell: no trial reads weights or data from disk.

    Defined here, beside the worker that caches it, so that unpickling it imports nothing a worker lacks (defined
    with the search, it made each worker's first trial import Ray Tune and Optuna: seconds per worker)."""

    model: ModelConfig
    encoder_state: dict[str, torch.Tensor]
    data: CellData
    features: Features | None
    attack: Attack
    eval_every: int
    cpus: float


def injected_fault(faults: FaultInjection | None, seed: int) -> str | None:
    """The kind of fault the trial with this seed suffers, or None; the same on every attempt."""
    if faults is None or derive_seed("fault", seed) / 2**31 >= faults.fraction:
        return None
    return faults.kinds[derive_seed("fault-kind", seed) % len(faults.kinds)]


# One training at a time (the default group); the "control" methods run beside it, so a trial's validation checks
# can be streamed out and the trial stopped while it trains. The pool starts workers with the trial's resources.
@ray.remote(num_cpus=0, concurrency_groups={"control": 4})
class AttackWorker:
    """Runs attack trials and reruns of any cell in flight; caches the payloads (weights, data, features) of the
    last `payload_slots` cells it ran, so that trials of cells searched side by side do not reload them each time."""

    def __init__(self, resources: Resources, faults: FaultInjection | None = None, payload_slots: int = 1):
        from transformers import BertModel  # noqa: F401  (imported now, while the driver still prepares the cell)

        torch.set_num_threads(max(1, int(resources.cpu)))
        self._device = assigned_device(resources.gpu)
        prepare_device(self._device, resources.gpu)
        self._hardware = hardware(self._device)
        self._payloads: OrderedDict[str, Any] = OrderedDict()  # payload ref -> payload, oldest first
        self._slots = max(1, payload_slots)
        self._faults = faults
        self._trial: str | None = None  # the search trial training now
        self._steps = 0  # its training steps so far
        self._stopped: set[str] = set()  # search trials to stop at their next step
        self._checks: dict[str, queue.SimpleQueue] = {}  # search trial -> its validation checks, then None
        self._ran: dict[str, int] = {}  # search trials ended here, not yet asked for by `trial_steps` -> their steps

    def run(self, holder: list, config: dict[str, Any], seed: int, score_test: bool) -> dict[str, Any]:

        started = time.perf_counter()
        fault = injected_fault(self._faults, seed)
        if fault is not None:
            log.warning("injecting a fault (%s) into the trial with seed %d", fault, seed)
        if fault == "crash":
            os._exit(1)  # no cleanup, no exception: the way the kernel's OOM killer ends a process
        if fault == "exception":
            raise InjectedFault(f"injected exception (trial seed {seed})")
        payload = self._payload(holder[0])
        ctx = AttackContext(payload.model, payload.encoder_state, payload.data, payload.features,
                            payload.eval_every, self._device, on_eval=self._on_eval, on_step=self._on_step)
        torch.manual_seed(seed)
        outcome = payload.attack.run(ctx, config, seed, score_test)
        val = _accuracy(payload.attack.name, "val_accuracy", math.nan if fault == "nan" else outcome.val_accuracy)
        test = _accuracy(payload.attack.name, "test_accuracy", outcome.test_accuracy) if score_test else None
        name = payload.attack.name
        return {
            "val_accuracy": val,
            "test_accuracy": test,
            # (step, accuracy) checks, for the curves table; test ones for reruns only
            "val_curve": [(int(step), _accuracy(name, "a validation check", a)) for step, a in outcome.val_curve],
            "test_curve": ([(int(step), _accuracy(name, "a test check", a)) for step, a in outcome.test_curve]
                           if score_test else []),
            "steps_run": outcome.steps_run,
            "best_step": outcome.best_step,
            "seconds": time.perf_counter() - started,
            "node_id": ray.get_runtime_context().get_node_id(),
            "hardware": self._hardware,
            "precision": ctx.precision,
        }

    def _payload(self, ref: Any) -> CellPayload:
        key = ref.hex()
        if key in self._payloads:
            self._payloads.move_to_end(key)
        else:
            while len(self._payloads) >= self._slots:
                self._payloads.popitem(last=False)  # free the oldest cell's weights before loading the next
            self._payloads[key] = ray.get(ref)
        return self._payloads[key]

    def encode(self, model: ModelConfig, state: dict[str, torch.Tensor], splits: list[TokenizedSplit]
               ) -> list[torch.Tensor]:
        """The defended encoder's frozen features of each split (float32, on the CPU), computed on this worker's
        device at the precision its trials run at."""
        from harness.classifier import Classifier
        from harness.models import build_encoder
        from harness.training import encode

        encoder = build_encoder(model, pretrained=False, attention=attention_for(self._device, False))
        classifier = Classifier(encoder, 2, model.pooling, resolve_precision(model.precision, self._device))
        classifier.encoder.load_state_dict(state)
        classifier.to(self._device)
        return [encode(classifier, split) for split in splits]

    def trial(self, holder: list, config: dict[str, Any], seed: int, trial_id: str, pool_queue: Queue) -> dict:
        """A search trial: `run` without test scoring, streaming its validation checks to `evaluations` and
        stoppable by `stop`. The worker then rejoins `pool_queue` itself: the trial's proxy may be gone by then."""
        self._trial, self._steps = trial_id, 0
        try:
            result = self.run(holder, config, seed, False)
            self._ran[trial_id] = result["steps_run"]
            return result
        except TrialStopped:
            self._ran[trial_id] = self._steps
            return {"stopped": True, "steps_run": self._steps}
        finally:
            self._trial = None
            self._stopped.discard(trial_id)
            self._channel(trial_id).put(None)
            pool_queue.put(ray.get_runtime_context().current_actor)

    @ray.method(concurrency_group="control")
    def evaluations(self, trial_id: str):
        """The trial's validation checks as (step, accuracy, node id), as they happen, until the trial ends."""
        channel = self._channel(trial_id)
        node_id = ray.get_runtime_context().get_node_id()
        while (check := channel.get()) is not None:
            yield (*check, node_id)
        self._checks.pop(trial_id, None)

    @ray.method(concurrency_group="control")
    def stop(self, trial_ids: list[str]) -> None:
        """Stop whichever of these search trials is training here, at its next step."""
        current = self._trial
        if current is not None and current in trial_ids:
            self._stopped.add(current)

    @ray.method(concurrency_group="control")
    def trial_steps(self, trial_ids: list[str]) -> dict[str, int]:
        """The training steps each of these search trials ran here, stopped or not, once none of them is training
        (another cell's trial may be: it is not waited for)."""
        while self._trial in trial_ids:
            time.sleep(0.02)
        return {t: self._ran.pop(t) for t in trial_ids if t in self._ran}

    def _channel(self, trial_id: str) -> queue.SimpleQueue:
        return self._checks.setdefault(trial_id, queue.SimpleQueue())

    def _on_eval(self, step: int, accuracy: float) -> None:
        if self._trial is not None:
            self._channel(self._trial).put((step, accuracy))

    def _on_step(self, step: int, loss: float) -> None:
        self._steps = step
        if self._trial is not None and self._trial in self._stopped:
            raise TrialStopped(f"trial {self._trial} stopped by the search at step {step}")


def _accuracy(attack: str, name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise InvalidOutcome(f"attack '{attack}' reported {name} {value!r}, not a number in [0, 1]")
    return number


ENCODE_ATTEMPTS = 3  # workers a feature computation may lose (to crashes, or to nodes leaving) before the run stops
SETTLE_WAIT_S = 60.0  # a worker that has not answered by then never started (no node had room): it ran nothing


@ray.remote(num_cpus=0)
class _Spawner:
    """Creates the pool's workers, and so owns them: a Ray actor dies with its owner, and a worker that replaces a
    dead one from inside a trial must outlive that trial's actor, though not the driver (which owns the spawner).

    A replacement joins the queue only once it runs: after a node is lost, the nodes left may have no room for it
    yet, and a worker handed out before it starts would hold its trial until there is."""

    def __init__(self, options: dict[str, Any], args: tuple, pool_queue: Queue):
        self._options, self._args, self._queue = options, args, pool_queue
        self._workers: list[Any] = []  # held so they stay alive

    def spawn(self) -> Any:
        worker = self._create()
        self._workers.append(worker)
        return worker

    async def replace(self) -> None:
        worker = self._create()
        try:
            await worker.__ray_ready__.remote()
        except RayError:
            return  # it could not start after all: the pool is one worker smaller
        # Known (to `stop` and `settle`) only once it runs: one still waiting for room would keep them waiting.
        self._workers.append(worker)
        await self._queue.put_async(worker)

    def _create(self) -> Any:
        # SPREAD: over the nodes with room for the worker's resources, which it reserves, so no node gets more
        # workers than it holds and an autoscaler sees the demand of any that wait.
        return AttackWorker.options(**self._options, scheduling_strategy="SPREAD").remote(*self._args)

    def workers(self) -> list[Any]:
        return list(self._workers)


class WorkerPool:
    """`size` workers with a trial's resources, and a queue that lends them to trials one at a time, whichever
    cell's: the cells searched at once share the pool. A worker that died is replaced once a node has room."""

    def __init__(self, size: int, resources: Resources, faults: FaultInjection | None = None, payload_slots: int = 1):
        self.size = size
        options = {"num_cpus": resources.cpu, "num_gpus": resources.gpu}
        here = on_this_node()  # the pool's bookkeeping stays with the driver; its workers go where there is room
        self.queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
        self._spawner = _Spawner.options(scheduling_strategy=here).remote(options, (resources, faults, payload_slots),
                                                                          self.queue)
        for handle in ray.get([self._spawner.spawn.remote() for _ in range(size)]):
            self.queue.put(handle)

    def replace_lost(self) -> None:
        """Have the spawner start a worker in place of one that died (returns at once)."""
        self._spawner.replace.remote()

    def loss_reporter(self):
        """`replace_lost` for a trial's proxy, which must not import this module (nor torch) to call it."""
        spawner = self._spawner
        return lambda: spawner.replace.remote()

    def encode(self, model: ModelConfig, state: Any, splits: list[TokenizedSplit]) -> list[torch.Tensor]:
        """`AttackWorker.encode` on a free worker (`state`: the weights or their object reference); on another one
        if that worker is lost on the way."""
        for attempt in range(ENCODE_ATTEMPTS):
            worker = self.queue.get()
            try:
                encoded = ray.get(worker.encode.remote(model, state, splits))
            except WORKER_LOST:
                self.replace_lost()
                if attempt + 1 == ENCODE_ATTEMPTS:
                    raise
                continue
            self.queue.put(worker)
            return encoded
        raise AssertionError("unreachable")

    def run_all(
        self, holder: list, jobs: list[tuple[dict[str, Any], int]], score_test: bool, attempts: int
    ) -> list[dict[str, Any] | RayError]:
        """Run (config, seed) jobs on the pool's free workers; a failing job is tried up to `attempts` times in all.

        Returns each job's result, or the error of its last attempt. A worker that died is replaced. While some of
        its jobs run, it takes only workers that are free now: others may be lent to other cells' trials, or lost.
        """
        outcomes: list[Any] = [None] * len(jobs)
        tries = [0] * len(jobs)
        waiting = list(range(len(jobs)))
        running: dict[Any, tuple[int, Any]] = {}
        while waiting or running:
            while waiting:
                try:
                    worker = self.queue.get_nowait() if running else self.queue.get()
                except Empty:
                    break
                i = waiting.pop(0)
                tries[i] += 1
                config, seed = jobs[i]
                running[worker.run.remote(holder, config, seed, score_test)] = (i, worker)
            [done], _ = ray.wait(list(running), num_returns=1)
            i, worker = running.pop(done)
            try:
                outcomes[i] = ray.get(done)
                self.queue.put(worker)
            except WORKER_LOST as exc:
                outcomes[i] = exc
                self.replace_lost()
            except RayError as exc:  # the attack raised: Ray wraps its exception
                outcomes[i] = exc
                self.queue.put(worker)
            if isinstance(outcomes[i], RayError) and tries[i] < attempts:
                waiting.append(i)
        return outcomes

    def stop(self, trial_ids: list[str]) -> None:
        """Stop these search trials wherever they train, at their next step; returns at once."""
        for worker in ray.get(self._spawner.workers.remote()):
            worker.stop.remote(trial_ids)

    def settle(self, trial_ids: list[str]) -> dict[str, int]:
        """After a search: stop its trials still training, wait until they have, and return the training steps
        each ran, by trial id (what a trial cut short really cost: its proxy never heard its end)."""
        workers = ray.get(self._spawner.workers.remote())
        for worker in workers:
            worker.stop.remote(trial_ids)
        answers = [worker.trial_steps.remote(trial_ids) for worker in workers]
        ready, _ = ray.wait(answers, num_returns=len(answers), timeout=SETTLE_WAIT_S)
        ran: dict[str, int] = {}
        for answer in ready:
            try:
                ran.update(ray.get(answer))
            except WORKER_LOST:
                pass  # a dead worker trains nothing
        return ran

    def shutdown(self) -> None:
        self.queue.shutdown(force=True)
        ray.kill(self._spawner)  # its workers die with it
