"""The run's pool of trial workers: a lender that owns the workers, lends each to one trial (or rerun, or feature
computation) at a time, whichever cell's, and replaces the ones that die.

A worker is lent under a lease, a number: the borrower passes it to the worker, which marks it begun, and the worker
is given back under it when the work ends (`AttackWorker.trial` gives itself back: a trial's proxy may be gone by
then). A borrower can end between being lent a worker and handing it work (Tune stops a trial's proxy, or the
proxy's node leaves); that worker would be lost for the rest of the run, and on a small pool every trial after it
would wait forever. The lender finds such leases (long lent, never begun) and takes their workers back. (A borrower
that ends while it waits takes nothing: Ray cancels its wait.)
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import ray
import torch
from ray.exceptions import RayError

from harness.config import FaultInjection, ModelConfig, Resources
from harness.resources import on_this_node
from harness.tokenized import TokenizedSplit
from harness.trial import WORKER_LOST
from harness.workers import AttackWorker

ENCODE_ATTEMPTS = 3  # workers a feature computation may lose (to crashes, or to nodes leaving) before the run stops
SETTLE_WAIT_S = 60.0  # a worker that has not answered by then never started (no node had room): it ran nothing
# A worker lent this long that has begun none of the lease's work was lent to a borrower that died on the way. A
# borrower hands work over at once, so a false alarm would take a slow machine minutes; it would cost only time.
FORSAKEN_S = 30.0
REAP_EVERY_S = 5.0  # at most; the lender looks at its leases this often


@ray.remote(num_cpus=0)
class _Lender:
    """Creates the pool's workers, and so owns them (a Ray actor dies with its owner: a worker that replaces a dead
    one from inside a trial must outlive that trial's actor, though not the driver, which owns the lender), and
    lends them out. An async actor: its methods interleave on one event loop, so its state needs no lock."""

    def __init__(self, options: dict[str, Any], args: tuple, size: int, forsaken_s: float):
        self._options, self._args = options, args
        self._forsaken_s, self._reap_every_s = forsaken_s, min(REAP_EVERY_S, forsaken_s / 2)
        self._starting = [self._create() for _ in range(size)]  # joined by `start`, each once it runs
        self._workers: list[Any] = []  # the workers that run: lent, and told to stop or settle
        self._free: deque[Any] = deque()
        self._lent: dict[int, tuple[Any, float]] = {}  # lease -> (worker, when lent)
        self._leases = 0
        self._changed: asyncio.Condition | None = None  # made on the actor's event loop, at the first borrow
        self._reaper: asyncio.Task | None = None
        self._joining: set[asyncio.Task] = set()  # workers waiting to run, first or in a lost one's place

    async def start(self) -> None:
        """Lend each first worker once it runs (returns at once). Until then a node's room may still be held by
        defense trainings (`harness.trainings`), and a worker lent before it runs would hold its trial meanwhile."""
        starting, self._starting = self._starting, []
        for worker in starting:
            self._spawn(self._join(worker))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._joining.add(task)  # held until done: the event loop keeps only a weak reference
        task.add_done_callback(self._joining.discard)

    def _create(self) -> Any:
        # SPREAD: over the nodes with room for the worker's resources, which it reserves, so no node gets more
        # workers than it holds and an autoscaler sees the demand of any that wait.
        return AttackWorker.options(**self._options, scheduling_strategy="SPREAD").remote(*self._args)

    async def borrow(self) -> tuple[int, Any]:
        """A free worker and its lease, once one is free."""
        changed = self._condition()
        async with changed:
            await changed.wait_for(lambda: bool(self._free))
            return self._lend()

    async def try_borrow(self) -> tuple[int, Any] | None:
        """A free worker and its lease, or None if none is free now."""
        return self._lend() if self._free else None

    def _lend(self) -> tuple[int, Any]:
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap())
        self._leases += 1
        worker = self._free.popleft()
        self._lent[self._leases] = (worker, time.monotonic())
        return self._leases, worker

    async def give_back(self, lease: int) -> None:
        """The lease's work has ended and its worker is free (a lease taken back already is ignored)."""
        lent = self._lent.pop(lease, None)
        if lent is not None:
            await self._release(lent[0])

    async def lost(self, lease: int) -> None:
        """The lease's worker died (killed for memory, or its node left): start another in its place (returns at
        once; the new worker is lent once it runs, which waits for a node with room)."""
        lent = self._lent.pop(lease, None)
        if lent is not None:
            dead = lent[0]
            if dead in self._workers:
                self._workers.remove(dead)
            self._spawn(self._join(self._create()))

    async def _release(self, worker: Any) -> None:
        changed = self._condition()
        async with changed:
            self._free.append(worker)
            changed.notify()

    async def _join(self, worker: Any) -> None:
        try:
            await worker.__ray_ready__.remote()
        except RayError:
            return  # it could not start after all: the pool is one worker smaller
        # Lent (and known to `stop` and `settle`) only once it runs: the nodes may have no room for it yet (held by
        # trainings, or lost with a node), and a worker lent before it starts would hold its trial until there is.
        self._workers.append(worker)
        await self._release(worker)

    async def _reap(self) -> None:
        suspects: set[int] = set()  # leases found not begun once: taken back if still not begun at the next look
        while True:
            await asyncio.sleep(self._reap_every_s)
            now = time.monotonic()
            for lease, (worker, since) in list(self._lent.items()):
                if now - since < self._forsaken_s:
                    continue
                try:
                    begun = await asyncio.wait_for(worker.begun.remote(), timeout=self._reap_every_s)
                except asyncio.TimeoutError:
                    continue  # busy or frozen: asked again next time
                except WORKER_LOST:
                    await self.lost(lease)  # died with nobody left to say so
                    continue
                if begun >= lease:
                    suspects.discard(lease)
                elif lease not in suspects:
                    # Twice, because a worker still starting may answer this before it begins the work it holds.
                    suspects.add(lease)
                elif self._lent.pop(lease, None) is not None:
                    await self._release(worker)  # its borrower never handed it work: forsaken
            suspects &= set(self._lent)

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    def workers(self) -> list[Any]:
        return list(self._workers)


class WorkerPool:
    """`size` workers with a trial's resources, lent to trials one at a time, whichever cell's: the cells searched
    at once share the pool. A worker that died is replaced once a node has room."""

    def __init__(self, size: int, resources: Resources, faults: FaultInjection | None = None, payload_slots: int = 1,
                 forsaken_s: float = FORSAKEN_S):
        self.size = size
        options = {"num_cpus": resources.cpu, "num_gpus": resources.gpu}
        # The pool's bookkeeping stays with the driver; its workers go where there is room.
        self.lender = _Lender.options(scheduling_strategy=on_this_node()).remote(
            options, (resources, faults, payload_slots), size, forsaken_s)
        ray.get(self.lender.start.remote())

    def borrow(self, timeout: float | None = None) -> tuple[int, Any]:
        """A free worker and its lease (`give_back` or `lost` ends it); waits up to `timeout` seconds for one."""
        return ray.get(self.lender.borrow.remote(), timeout=timeout)

    def give_back(self, lease: int) -> None:
        self.lender.give_back.remote(lease)

    def any_running(self) -> bool:
        """Some worker runs now (the first ones may still wait for room that defense trainings hold)."""
        return bool(ray.get(self.lender.workers.remote()))

    def lost(self, lease: int) -> None:
        """The lease's worker died: have the lender start another in its place (returns at once)."""
        self.lender.lost.remote(lease)

    def encode(self, model: ModelConfig, state: Any, splits: list[TokenizedSplit]) -> list[torch.Tensor]:
        """`AttackWorker.encode` on a free worker (`state`: the weights or their object reference); on another one
        if that worker is lost on the way."""
        for attempt in range(ENCODE_ATTEMPTS):
            lease, worker = self.borrow()
            try:
                encoded = ray.get(worker.encode.remote(model, state, splits, lease))
            except WORKER_LOST:
                self.lost(lease)
                if attempt + 1 == ENCODE_ATTEMPTS:
                    raise
                continue
            self.give_back(lease)
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
        running: dict[Any, tuple[int, int]] = {}  # result ref -> (job, lease)
        while waiting or running:
            while waiting:
                lent = ray.get(self.lender.try_borrow.remote()) if running else self.borrow()
                if lent is None:
                    break
                lease, worker = lent
                i = waiting.pop(0)
                tries[i] += 1
                config, seed = jobs[i]
                running[worker.run.remote(holder, config, seed, score_test, lease)] = (i, lease)
            [done], _ = ray.wait(list(running), num_returns=1)
            i, lease = running.pop(done)
            try:
                outcomes[i] = ray.get(done)
                self.give_back(lease)
            except WORKER_LOST as exc:
                outcomes[i] = exc
                self.lost(lease)
            except RayError as exc:  # the attack raised: Ray wraps its exception
                outcomes[i] = exc
                self.give_back(lease)
            if isinstance(outcomes[i], RayError) and tries[i] < attempts:
                waiting.append(i)
        return outcomes

    def stop(self, trial_ids: list[str]) -> None:
        """Stop these search trials wherever they train, at their next step; returns at once."""
        for worker in ray.get(self.lender.workers.remote()):
            worker.stop.remote(trial_ids)

    def settle(self, trial_ids: list[str]) -> dict[str, int]:
        """After a search: stop its trials still training, wait until they have, and return the training steps
        each ran, by trial id (what a trial cut short really cost: its proxy never heard its end)."""
        workers = ray.get(self.lender.workers.remote())
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
        ray.kill(self.lender)  # its workers die with it
