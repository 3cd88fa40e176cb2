"""A Ray task's progress on the driver's own display.

A progress bar drawn inside a Ray task reaches the driver as forwarded log lines, a new line per update. Instead the
task reports its steps to a small actor, and the driver, while it waits for the task, reads them and moves its own
bar (`harness.console.StepBar`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ray

REPORT_INTERVAL_S = 1.0  # a remote call per training step would cost more than a tiny model's step
POLL_S = 0.5


@ray.remote(num_cpus=0)
class ProgressBoard:
    """The latest (step, metrics) each reporting task sent, by key, until the driver takes it."""

    def __init__(self) -> None:
        self.latest: dict[str, tuple[int, dict[str, float]]] = {}

    def report(self, key: str, step: int, metrics: dict[str, float]) -> None:
        self.latest[key] = (step, metrics)

    def take(self, key: str) -> tuple[int, dict[str, float]] | None:
        return self.latest.pop(key, None)


class BoardReporter:
    """A `(step, metrics)` callback for code that runs in a Ray task: reports to the board at most every
    REPORT_INTERVAL_S, without waiting for the call."""

    def __init__(self, board: Any, key: str):
        self.board = board
        self.key = key
        self.last = float("-inf")

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        if now - self.last >= REPORT_INTERVAL_S:
            self.last = now
            self.board.report.remote(self.key, step, {k: float(v) for k, v in metrics.items()})


def get_reporting(ref: Any, board: Any, key: str, on_report: Callable[[int, dict[str, float]], None]) -> Any:
    """`ray.get(ref)`, passing the task's reports under `key` to `on_report` while it runs."""
    while True:
        ready, _ = ray.wait([ref], timeout=POLL_S)
        report = ray.get(board.take.remote(key))
        if report is not None:
            on_report(*report)
        if ready:
            return ray.get(ref)
