"""The paper plan's shape on a simulated cluster: a real `sdm run --address` driver on a local Ray `Cluster` of
`--nodes` nodes advertising `--slots` trial slots each (logical CPUs: the stand-in for a node's GPUs), its trials
played by `benchmarks.sleep_attack:Sleep`, which sleeps instead of training.

The plan per cell is paper.yaml's: 50 search trials (no plateau stop, so every cell runs all 50), 15 reruns, 4 trials
of a cell at once; `--seeds` seeds x budgets 30 and 60 cells of random-init on the harmful task. Everything else is
real: the driver, the cell searchers and their seeded TPE, the pool's lender and workers, the tables.

Reported:
- busy share: the trials' sleeping time over (slots x wall time), for the driver's whole wall time and for the
  window from the first trial's start to the last one's end;
- overhead per trial: the CPU time of the run's own processes (driver, cell searchers, lender, board, trial proxies)
  per trial, and the idle slot-time per trial in the trial window;
- driver memory: resident MB when a tenth of the trials had ended and when nine tenths had, and the peak; the cell
  searchers' peak resident MB each.

    .venv/bin/python benchmarks/simulated_cluster.py --nodes 4 --slots 4 --seeds 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ray.cluster_utils import Cluster

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.processes import Process, ray_actors, read  # noqa: E402
from benchmarks.sleep_attack import SLEEP_LOG  # noqa: E402
from harness.results import read_trials  # noqa: E402

SMOKE = ROOT / "configs" / "smoke.yaml"


def overrides(args: argparse.Namespace, out: Path) -> list[str]:
    attack = {"name": "benchmarks.sleep_attack:Sleep", "params": {"seconds_per_step": args.seconds_per_step}}
    sets = ["defenses=[{name: random-init}]", "tasks.attacked=[harmful]", "budgets=[30, 60]",
            f"seeds={list(range(args.seeds))}", "defense_training.seeding=shared", f"attacks=[{json.dumps(attack)}]",
            "search.num_samples=50", "search.plateau_patience=50", "search.reruns=15", "search.max_concurrent=4",
            "search.resources_per_trial={cpu: 1}", f"output={out}"]
    return [a for s in sets for a in ("--set", s)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--slots", type=int, default=4, help="trial slots a node advertises")
    parser.add_argument("--seeds", type=int, default=8, help="cells: 2 budgets x seeds")
    parser.add_argument("--seconds-per-step", type=float, default=0.02, help="a trial sleeps 100-300 steps of it")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sdm-simulated-"))
    sleeps = work / "sleeps"
    sleeps.mkdir()
    out = work / "run"
    # Before the cluster starts: its workers inherit the environment (the sleep log, and this repository's modules).
    os.environ.update({SLEEP_LOG: str(sleeps), "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled",
                       "SDM_CACHE_DIR": str(work / "cache")})
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": args.slots, "include_dashboard": False})
    try:
        for _ in range(args.nodes - 1):
            cluster.add_node(num_cpus=args.slots)
        cluster.wait_for_nodes()
        command = [sys.executable, "-m", "harness.cli", "run", str(SMOKE), *overrides(args, out),
                   "--address", cluster.address]
        started = time.time()
        driver = subprocess.Popen(command, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        samples: list[tuple[float, int, Process]] = []  # (time, cells written, driver)
        overhead: dict[int, Process] = {}  # pid -> its newest reading
        peak_mb: dict[int, float] = {}  # pid -> its highest resident memory
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                me = read(driver.pid)
                cells = len(list((out / "cells").glob("*.parquet"))) if (out / "cells").exists() else 0
                if me is not None:
                    samples.append((time.time(), cells, me))
                    overhead[me.pid] = me
                for process in ray_actors():
                    overhead[process.pid] = process
                    peak_mb[process.pid] = max(peak_mb.get(process.pid, 0.0), process.rss_mb)
                done.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, stderr = driver.communicate()
        wall = time.time() - started
        done.set()
        sampler.join()
        if driver.returncode != 0:
            raise SystemExit(f"sdm run failed ({driver.returncode}): {stderr[-3000:]}")
    finally:
        cluster.shutdown()

    trials = read_trials(out).to_pylist()
    spans = [tuple(map(float, line.split())) for f in sleeps.glob("*.log") for line in f.read_text().splitlines()]
    slept = sum(end - start for start, end in spans)
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    slots = args.nodes * args.slots
    cells = args.seeds * 2
    per_cell = len(trials) / cells

    def driver_mb(share: float) -> float:
        return next(p.rss_mb for _, n, p in samples if n * per_cell >= share * len(trials))

    searchers = [p for p in overhead.values() if p.name == "CellSearcher"]
    print(json.dumps({
        "slots": slots, "cells": cells, "trials": len(trials), "trial_rows_expected": cells * 65,
        "wall_s": round(wall), "trial_window_s": round(last - first),
        "mean_trial_s": round(slept / len(spans), 2),
        "busy_share_wall": round(slept / (slots * wall), 3),
        "busy_share_window": round(slept / (slots * (last - first)), 3),
        "overhead_cpu_ms_per_trial": round(1000 * sum(p.cpu_s for p in overhead.values()) / len(trials)),
        "idle_slot_ms_per_trial": round(1000 * (slots * (last - first) - slept) / len(trials)),
        "driver_rss_mb_at_10pct": round(driver_mb(0.1)), "driver_rss_mb_at_90pct": round(driver_mb(0.9)),
        "driver_rss_mb_peak": round(max(p.rss_mb for _, _, p in samples)),
        "searchers": len(searchers), "searcher_rss_mb_peak": round(max((peak_mb[p.pid] for p in searchers), default=0)),
    }))


if __name__ == "__main__":
    main()
