"""A Ray task's progress on the driver's own display.

A progress bar drawn inside a Ray task reaches the driver as forwarded log lines, a new line per update. Instead the
task reports its steps to a small actor, and the driver, while it waits for the task, reads them and moves its own
bar (`harness.console.StepBar`).
"""

from __future__ import annotations

import time
from typing import Any

import ray

REPORT_INTERVAL_S = 1.0  # a remote call per training step would cost more than a tiny model's step
POLL_S = 0.5


@ray.remote(num_cpus=0)
class ProgressBoard:
    """The latest (step, metrics) each reporting task sent, by key, until the driver takes it."""

    def __init__(self) -> None:
        self.latest: dict[str, tuple[int, dict[str, float]]] = {}
        self.begun: set[str] = set()

    def report(self, key: str, step: int, metrics: dict[str, float]) -> None:
        self.latest[key] = (step, metrics)

    def begin(self, key: str) -> None:
        self.begun.add(key)

    def begun_keys(self) -> set[str]:
        """The keys whose tasks have begun (`BoardReporter.begin`), whether or not they have reported a step."""
        return set(self.begun)

    def take_all(self) -> dict[str, tuple[int, dict[str, float]]]:
        latest, self.latest = self.latest, {}
        return latest


class BoardReporter:
    """A `(step, metrics)` callback for code that runs in a Ray task: reports to the board at most every
    REPORT_INTERVAL_S, without waiting for the call."""

    def __init__(self, board: Any, key: str):
        self.board = board
        self.key = key
        self.last = float("-inf")

    def begin(self) -> None:
        """Tell the board this task has begun: it holds its resources now."""
        self.board.begin.remote(self.key)

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        if now - self.last >= REPORT_INTERVAL_S:
            self.last = now
            self.board.report.remote(self.key, step, {k: float(v) for k, v in metrics.items()})
