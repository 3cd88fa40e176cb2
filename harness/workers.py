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
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import ray
import torch

from harness.config import FaultInjection, ModelConfig, Resources
from harness.device import assigned_device, attention_for, hardware, prepare_device
from harness.plugins import Attack, AttackContext, CellData
from harness.tokenized import TokenizedSplit
from harness.training import Features, resolve_precision
from harness.trial import derive_seed

log = logging.getLogger(__name__)


CHECKS_WAIT_S = 2.0  # longest a trial's proxy waits in one ask for news (`AttackWorker.checks`)


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
        # A search trial's validation checks, by the lease it runs under (a retry of the trial has a new one), and
        # the leases whose trials have ended; `_news` wakes the proxies waiting in `checks`.
        self._checks: dict[int, list[tuple[int, float]]] = {}
        self._ended: set[int] = set()
        self._news = threading.Condition()
        self._lease = 0  # the lease of the search trial training now
        self._ran: dict[str, int] = {}  # search trials ended here, not yet asked for by `trial_steps` -> their steps
        self._begun = 0  # the newest lease (`harness.pool`) whose work this worker has begun

    def run(self, holder: list, config: dict[str, Any], seed: int, score_test: bool, lease: int) -> dict[str, Any]:
        """One attack run of a cell's payload; `lease`: the one this worker was lent under."""
        self._begin(lease)
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

    def encode(self, model: ModelConfig, state: dict[str, torch.Tensor], splits: list[TokenizedSplit], lease: int
               ) -> list[torch.Tensor]:
        """The defended encoder's frozen features of each split (float32, on the CPU), computed on this worker's
        device at the precision its trials run at."""
        self._begin(lease)
        from harness.classifier import Classifier
        from harness.models import build_encoder
        from harness.training import encode

        encoder = build_encoder(model, pretrained=False, attention=attention_for(self._device, False))
        classifier = Classifier(encoder, 2, model.pooling, resolve_precision(model.precision, self._device))
        classifier.encoder.load_state_dict(state)
        classifier.to(self._device)
        return [encode(classifier, split) for split in splits]

    def trial(self, holder: list, config: dict[str, Any], seed: int, trial_id: str, lender: Any, lease: int) -> dict:
        """A search trial: `run` without test scoring, its validation checks told as they come (`checks`),
        stoppable by `stop`. The worker then gives itself back to `lender` itself: the trial's proxy may be gone."""
        with self._news:
            self._checks[lease] = []
        self._trial, self._lease, self._steps = trial_id, lease, 0
        try:
            result = self.run(holder, config, seed, False, lease)
            self._ran[trial_id] = result["steps_run"]
            return result
        except TrialStopped:
            self._ran[trial_id] = self._steps
            return {"stopped": True, "steps_run": self._steps}
        finally:
            self._trial = None
            self._stopped.discard(trial_id)
            with self._news:
                self._ended.add(lease)
                self._news.notify_all()
            lender.give_back.remote(lease)

    def _begin(self, lease: int) -> None:
        self._begun = max(self._begun, lease)

    @ray.method(concurrency_group="control")
    def begun(self) -> int:
        """The newest lease whose work this worker has begun (the lender's check for a borrower that vanished)."""
        return self._begun

    @ray.method(concurrency_group="control")
    def checks(self, lease: int, seen: int) -> tuple[list[tuple[int, float]], bool, str]:
        """The (step, accuracy) validation checks of the lease's trial after the first `seen`, whether the trial
        has ended, and this worker's node: once there is news, or after CHECKS_WAIT_S without.

        Asked for again and again rather than streamed: a plain call to a worker whose node has left fails, where
        consuming a Ray streaming generator from it can hang (ray-project/ray#62537, #47582)."""
        with self._news:
            self._news.wait_for(lambda: len(self._checks.get(lease, ())) > seen or lease in self._ended,
                                timeout=CHECKS_WAIT_S)
            new = self._checks.get(lease, [])[seen:]
            ended = lease in self._ended
            if ended:  # the proxy has every check now
                self._checks.pop(lease, None)
                self._ended.discard(lease)
        return new, ended, ray.get_runtime_context().get_node_id()

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

    def _on_eval(self, step: int, accuracy: float) -> None:
        if self._trial is not None:
            with self._news:
                self._checks[self._lease].append((step, accuracy))
                self._news.notify_all()

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
