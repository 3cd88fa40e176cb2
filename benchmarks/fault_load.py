"""Load with faults: about 1,000 trials of the smoke model with `--fraction` of them failing on purpose
(`search.fault_injection`: exceptions, NaN accuracies and worker crashes), many cells in flight, on a local Ray
instance; the driver runs in this process, which samples its own resident memory as the trials end.

Checked and reported: every cell completes or is marked failed; no trial row is lost (each cell has as many search
rows as it says it ran, and its reruns) or written twice; the driver's resident memory when the first hundred search trials
had started and when the last hundred did, and the growth between them; the cell searchers' (summed) at the same times.

    .venv/bin/python benchmarks/fault_load.py --seeds 3 --trials 80 --reruns 4 --fraction 0.2
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from benchmarks.processes import ray_actors, read  # noqa: E402
from harness.configfile import load_config  # noqa: E402
from harness.results import read_cells, read_trials  # noqa: E402
from harness.runner import run_experiment  # noqa: E402

SMOKE = ROOT / "configs" / "smoke.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="cells: 2 tasks x 2 budgets x seeds")
    parser.add_argument("--trials", type=int, default=80, help="search trials a cell (no plateau stop)")
    parser.add_argument("--reruns", type=int, default=4, help="reruns a cell")
    parser.add_argument("--per-cell", type=int, default=2, help="search.max_concurrent")
    parser.add_argument("--fraction", type=float, default=0.2)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    work = Path(tempfile.mkdtemp(prefix="sdm-faults-"))
    os.environ["SDM_CACHE_DIR"] = str(work / "cache")
    out = work / "run"
    faults = {"fraction": args.fraction, "kind": ["exception", "nan", "crash"]}
    cfg = load_config(SMOKE, [
        "defenses=[{name: random-init}]", f"seeds={list(range(args.seeds))}", "defense_training.seeding=shared",
        f"search.num_samples={args.trials}", f"search.plateau_patience={args.trials}",
        f"search.reruns={args.reruns}", f"search.max_concurrent={args.per_cell}", "search.max_failures=1",
        f"search.fault_injection={json.dumps(faults)}", f"output={out}",
    ])
    samples: list[tuple[float, int, float, float]] = []  # (time, trials started, driver MB, cell searchers' MB)
    started_in: dict[str, int] = {}  # cell -> its search's trial folders (kept once the cell's search is discarded)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for search in (out / "tune").glob("*/"):
                try:
                    trials = sum(entry.is_dir() for entry in search.iterdir())
                except OSError:
                    continue  # discarded meanwhile: its cell is recorded
                started_in[search.name] = max(started_in.get(search.name, 0), trials)
            searchers = sum(p.rss_mb for p in ray_actors(("CellSearcher",)))
            samples.append((time.perf_counter(), sum(started_in.values()), read(os.getpid()).rss_mb, searchers))
            done.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    summary = run_experiment(cfg, origin="smoke.yaml", console=Console(file=io.StringIO()))
    wall = time.perf_counter() - started
    done.set()
    sampler.join()

    cells = read_cells(out).to_pylist()
    trials = read_trials(out).to_pylist()
    keys = Counter((t["cell_id"], t["phase"], t["trial_id"]) for t in trials)
    lost = 0
    for cell in cells:
        search = sum(t["cell_id"] == cell["cell_id"] and t["phase"] == "search" for t in trials)
        reruns = sum(t["cell_id"] == cell["cell_id"] and t["phase"] == "rerun" for t in trials)
        lost += abs(search - cell["n_trials"]) + (abs(reruns - args.reruns) if cell["status"] == "ok" else 0)
    # Memory against search trials started (Tune makes each one's folder as it starts it).
    search_trials = sum(t["phase"] == "search" for t in trials)
    first = next(s for s in samples if s[1] >= 100)
    last = next(s for s in samples if s[1] >= search_trials - 100)
    print(json.dumps({
        "cells": len(cells), "cells_run": summary.cells_run,
        "ok": sum(c["status"] == "ok" for c in cells), "failed": sum(c["status"] == "failed" for c in cells),
        "trials": len(trials), "trial_errors": sum(t["status"] == "error" for t in trials),
        "rows_duplicated": sum(n - 1 for n in keys.values() if n > 1), "rows_lost": lost,
        "wall_s": round(wall), "trials_per_hour": round(len(trials) / wall * 3600),
        "driver_rss_mb_first_100": round(first[2]), "driver_rss_mb_last_100": round(last[2]),
        "driver_rss_growth_mb": round(last[2] - first[2]),
        "searchers_rss_mb_first_100": round(first[3]), "searchers_rss_mb_last_100": round(last[3]),
    }))


if __name__ == "__main__":
    main()
