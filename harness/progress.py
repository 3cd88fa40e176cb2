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

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        if now - self.last >= REPORT_INTERVAL_S:
            self.last = now
            self.board.report.remote(self.key, step, {k: float(v) for k, v in metrics.items()})


def gather_reporting(
    refs: dict[str, Any],
    board: Any,
    on_report: dict[str, Callable[[int, dict[str, float]], None]],
    on_done: Callable[[str, Any], None],
) -> dict[str, Any]:
    """`ray.get` of every task in `refs` (by key), in whatever order they finish: while they run, each task's reports
    under its key go to `on_report[key]`, and each result goes to `on_done(key, result)` as it comes."""
    pending = {ref: key for key, ref in refs.items()}
    results: dict[str, Any] = {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_S)
        for key, report in ray.get(board.take_all.remote()).items():
            on_report[key](*report)
        for ref in ready:
            key = pending.pop(ref)
            results[key] = ray.get(ref)
            on_done(key, results[key])
    return results
