"""The processes of a run on this machine, read from /proc: resident memory and CPU time of the driver and of the
run's own Ray actors (cell searchers, the pool's lender, the board, trial proxies), for the load benchmarks."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
# The run's bookkeeping, by the name Ray gives an actor's process (`ray::Class` or `ray::Class.method`); the trial
# workers (`ray::AttackWorker`) are the work itself, not overhead.
OVERHEAD = ("CellSearcher", "_Lender", "ProgressBoard", "ImplicitFunc")


@dataclass(frozen=True)
class Process:
    pid: int
    name: str  # the actor class for a Ray actor, else the executable's name
    rss_mb: float
    cpu_s: float  # user + system, since the process started


def read(pid: int) -> Process | None:
    try:
        cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        status = (Path("/proc") / str(pid) / "status").read_text()
    except OSError:
        return None  # it ended meanwhile
    rss = next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0.0)
    name = cmdline[len("ray::"):].split(".")[0] if cmdline.startswith("ray::") else Path(cmdline).name
    return Process(pid, name, rss, (int(fields[11]) + int(fields[12])) / TICKS)


def ray_actors(names: tuple[str, ...] = OVERHEAD) -> list[Process]:
    """Every live process of these actor classes on this machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            process = read(int(entry.name))
            if process is not None and process.name in names:
                found.append(process)
    return found
