"""Cluster width: the same plan on local Ray clusters of 1 and 2 nodes (one CPU each, all this machine has), with
many cells in flight; reports trials per hour and the share of time every trial CPU was busy.

The plan: the smoke config's tiny model and stand-in data, random-init, the harmful task, budgets 30 and 60, `--seeds`
seeds, `finetune` with full fine-tuning of `--steps-low`..`--steps-high` steps, `--trials` trials a cell and one
rerun, `search.max_concurrent` `--per-cell`. Each cluster runs it from an empty run directory (the defense cache is
warmed first, outside the timing). The run is a real `sdm run --address` driver process (subprocess), so its wall
time includes joining the cluster, planning, loading the cached defenses and writing every table.

- trials per hour: the run's trials (search and reruns) over its wall time;
- busy share: the trial workers' compute (the trials table's `wall_seconds`, summed) over (wall time x trial CPUs).

    .venv/bin/python benchmarks/cluster_width.py --seeds 3 --trials 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ray.cluster_utils import Cluster

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.results import read_trials  # noqa: E402

SMOKE = ROOT / "configs" / "smoke.yaml"


def overrides(args: argparse.Namespace, out: Path) -> list[str]:
    attack = {"name": "finetune", "space": {"mode": "full", "batch_size": 16, "lr": {"type": "loguniform",
              "low": 1e-4, "high": 1e-2}, "steps": {"type": "int", "low": args.steps_low, "high": args.steps_high}}}
    sets = ["defenses=[{name: random-init}]", "tasks.attacked=[harmful]", f"seeds={list(range(args.seeds))}",
            f"attacks=[{json.dumps(attack)}]", f"search.num_samples={args.trials}",
            f"search.plateau_patience={args.trials}", "search.reruns=1", f"search.max_concurrent={args.per_cell}",
            f"output={out}"]
    return [a for s in sets for a in ("--set", s)]


def sdm(address: str | None, args: argparse.Namespace, out: Path, cache: Path) -> float:
    env = {**os.environ, "SDM_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    command = [sys.executable, "-m", "harness.cli", "run", str(SMOKE), *overrides(args, out)]
    if address:
        command += ["--address", address]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"sdm run failed ({result.returncode}): {result.stderr[-3000:]}")
    return time.perf_counter() - started


def measure(nodes: int, args: argparse.Namespace, cache: Path, work: Path) -> dict:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        out = work / f"nodes-{nodes}"
        wall = sdm(cluster.address, args, out, cache)
    finally:
        cluster.shutdown()
    trials = read_trials(out).to_pylist()
    compute = sum(t["wall_seconds"] or 0.0 for t in trials)
    return {"nodes": nodes, "trials": len(trials), "wall_s": round(wall, 1),
            "trials_per_hour": round(len(trials) / wall * 3600), "busy_share": round(compute / (wall * nodes), 3),
            "nodes_used": len({t["node_id"] for t in trials})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--per-cell", type=int, default=1, help="search.max_concurrent")
    parser.add_argument("--steps-low", type=int, default=150)
    parser.add_argument("--steps-high", type=int, default=300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sdm-width-"))
    cache = work / "cache"
    sdm(None, argparse.Namespace(**{**vars(args), "trials": 1, "seeds": args.seeds}), work / "warm", cache)
    results = [measure(nodes, args, cache, work) for nodes in (1, 2)]
    for row in results:
        print(json.dumps(row))
    one, two = results
    print(json.dumps({"speedup_1_to_2_nodes": round(two["trials_per_hour"] / one["trials_per_hour"], 2)}))


if __name__ == "__main__":
    main()
