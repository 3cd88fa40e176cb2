"""The worker pool's lender on a real local Ray instance: a worker lent to a borrower that dies before handing it work
comes back to the pool (before, it was lost for the rest of the run, and every trial after it waited forever); a
worker whose lease's work has begun is never taken back; a lost worker is replaced."""

from __future__ import annotations

import time

import pytest
import ray

from harness.config import Resources
from harness.models import build_encoder
from harness.pool import WorkerPool
from tests.test_attacks import TINY

FORSAKEN_S = 1.0


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture
def pool(local_ray):
    pool = WorkerPool(1, Resources(cpu=1), forsaken_s=FORSAKEN_S)
    yield pool
    pool.shutdown()


@ray.remote(num_cpus=0)
class Borrower:
    """A trial's proxy in miniature: waits for a worker, and may be ended (as Tune ends a proxy) while it waits."""

    def __init__(self, lender):
        self.lender = lender

    def borrow(self):
        return ray.get(self.lender.borrow.remote())


def test_a_worker_lent_to_a_borrower_that_died_before_handing_it_work_comes_back(pool: WorkerPool):
    borrower = Borrower.remote(pool.lender)
    lease, worker = ray.get(borrower.borrow.remote(), timeout=120)
    ray.kill(borrower)  # ended before it handed the worker a trial, as Tune may end a proxy
    started = time.monotonic()
    again, same = pool.borrow(timeout=60)  # taken back once forsaken: found twice not begun, then lent again
    assert same == worker and again > lease
    assert time.monotonic() - started >= FORSAKEN_S


def test_a_borrower_ended_while_it_waits_takes_no_worker(pool: WorkerPool):
    lease, worker = pool.borrow(timeout=120)
    borrower = Borrower.remote(pool.lender)
    waiting = borrower.borrow.remote()  # the pool is empty: it waits in the lender
    time.sleep(0.5)
    ray.kill(borrower)  # ended while it waits, as Tune ends a stopped trial's proxy: Ray cancels its wait
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(waiting, timeout=30)
    pool.give_back(lease)
    assert pool.borrow(timeout=FORSAKEN_S)[1] == worker  # at once: no lease of the dead borrower's to take back


def test_a_worker_whose_lease_has_begun_is_kept_by_its_borrower(pool: WorkerPool):
    lease, worker = pool.borrow(timeout=120)
    # The lease's work has begun (and, here, ended, with the worker not yet given back: as for a long trial).
    assert ray.get(worker.encode.remote(TINY, build_encoder(TINY).state_dict(), [], lease), timeout=120) == []
    time.sleep(FORSAKEN_S * 4)
    assert ray.get(pool.lender.try_borrow.remote()) is None  # still lent: nobody else gets it
    pool.give_back(lease)
    assert pool.borrow(timeout=30)[1] == worker


def test_a_lost_worker_is_replaced(pool: WorkerPool):
    lease, worker = pool.borrow(timeout=120)
    ray.kill(worker)
    pool.lost(lease)
    _, replacement = pool.borrow(timeout=120)
    assert replacement != worker
    assert ray.get(replacement.begun.remote(), timeout=60) == 0
    assert ray.get(pool.lender.workers.remote()) == [replacement]


def test_a_worker_that_died_with_its_borrower_is_replaced(pool: WorkerPool):
    """Nobody is left to report the loss: the lender finds it when it looks at the lease."""
    borrower = Borrower.remote(pool.lender)
    lease, worker = ray.get(borrower.borrow.remote(), timeout=120)
    ray.kill(borrower)
    ray.kill(worker)
    _, replacement = pool.borrow(timeout=120)
    assert replacement != worker
    assert ray.get(pool.lender.workers.remote()) == [replacement]
