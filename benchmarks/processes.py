"""The processes of a run on this machine, read from /proc: resident memory and CPU time of the driver and of the
run's own Ray actors (cell searchers, the pool's lender, the board, trial proxies), for the load benchmarks."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
# The run's bookkeeping, by the name Ray gives an actor's process (`ray::Class` or `ray::Class.method`); the trial
# workers (`ray::AttackWorker`) are the work itself, not overhead.
OVERHEAD = ("CellSearcher", "_Lender", "ProgressBoard", "ImplicitFunc")


@dataclass(frozen=True)
class Process:
    pid: int
    name: str  # what the process is (`kind_of`): the actor class for a Ray actor
    rss_mb: float
    cpu_s: float  # user + system, since the process started


def read(pid: int) -> Process | None:
    name, sample = kind_of(pid), cpu_and_start(pid)
    try:
        status = (Path("/proc") / str(pid) / "status").read_text()
    except OSError:
        return None  # it ended meanwhile
    if name is None or sample is None:
        return None
    rss = next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0.0)
    return Process(pid, name, rss, sample[0])


def ray_actors(names: tuple[str, ...] = OVERHEAD) -> list[Process]:
    """Every live process of these actor classes on this machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            process = read(int(entry.name))
            if process is not None and process.name in names:
                found.append(process)
    return found


def kind_of(pid: int) -> str | None:
    """What a process is, for a CPU ledger: a Ray actor's class (`ray::IDLE` for a pooled worker with no task yet),
    a Python script's file name (the driver, Ray's agents), or the executable's name (raylet, gcs_server)."""
    try:
        argv = [a.decode(errors="replace") for a in (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")]
    except OSError:
        return None
    if not argv or not argv[0]:
        return None  # a kernel thread
    if argv[0].startswith("ray::"):
        return argv[0][len("ray::"):].split(".")[0]
    if Path(argv[0]).name.startswith("python"):
        if "-c" in argv[1:2]:
            return "python -c"
        script = next((a for a in argv[1:] if a and not a.startswith("-")), "")
        return Path(script).name or "python"
    return Path(argv[0]).name


def cpu_and_start(pid: int) -> tuple[float, int] | None:
    """A process's CPU seconds so far (user + system) and its start time (clock ticks since boot, which tells a
    reused pid from the process that had it)."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS, int(fields[19])


class CpuLedger:
    """Where a machine's CPU time goes while something runs: every process's CPU seconds, sampled from /proc every
    `interval` seconds on a thread, summed by kind (`kind_of`). A process that ends between two samples loses at most
    its last interval; one that was running when the ledger was entered counts only from then."""

    def __init__(self, interval: float = 0.2) -> None:
        self._interval = interval
        self._seen: dict[tuple[int, int], list] = {}  # (pid, start) -> [kind, CPU at first sight, CPU at last sight]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)
        self._me = os.getpid()

    def _sample(self, baseline: bool) -> None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self._me:
                continue
            pid = int(entry.name)
            sample = cpu_and_start(pid)
            if sample is None:
                continue
            cpu, started = sample
            # Read at every sight: a Ray worker process starts as `setup_worker.py` and takes its actor's name later.
            kind = kind_of(pid)
            if kind is None:
                continue
            record = self._seen.setdefault((pid, started), [kind, cpu if baseline else 0.0, cpu])
            record[0], record[2] = kind, cpu

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample(baseline=False)

    def __enter__(self) -> "CpuLedger":
        self._sample(baseline=True)
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample(baseline=False)
        self.wall = time.perf_counter() - self.started

    def by_kind(self) -> dict[str, tuple[int, float]]:
        """kind -> (processes that used CPU, CPU seconds), most CPU first."""
        totals: dict[str, list] = {}
        for kind, first, last in self._seen.values():
            if last > first:
                entry = totals.setdefault(kind, [0, 0.0])
                entry[0] += 1
                entry[1] += last - first
        return {k: (n, s) for k, (n, s) in sorted(totals.items(), key=lambda kv: -kv[1][1])}
