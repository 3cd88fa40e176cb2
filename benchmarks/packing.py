"""How well this machine packs attack trials: the Trainer side of `attack_throughput.py` alone, then two copies of it
at once, each with one thread. If two at once train as fast as one alone, the machine packs perfectly, and any time
a two-worker sdm-bench trial takes beyond Trainer's one is sdm-bench's own.

    .venv/bin/python benchmarks/packing.py                       # the full grid of run 5, bf16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attack_throughput  # noqa: E402  (beside this file)


def start(opts: argparse.Namespace, grid: list[dict], work: Path) -> subprocess.Popen:
    work.mkdir(parents=True)
    spec = work / "spec.json"
    spec.write_text(json.dumps({"opts": vars(opts), "grid": grid, "workdir": str(work)}, default=str))
    return subprocess.Popen([sys.executable, attack_throughput.__file__, "--child", "trainer", str(spec),
                             str(work / "result.json")], cwd=attack_throughput.ROOT,
                            stdout=(work / "log.txt").open("w"), stderr=subprocess.STDOUT)


def mean_compute(work: Path) -> tuple[float, float]:
    result = json.loads((work / "result.json").read_text())
    return sum(t["compute"] for t in result["trials"]) / len(result["trials"]), result["search_wall"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    args = parser.parse_args()
    opts = argparse.Namespace(trials=args.trials, grids=["full"], steps=[25, 50], budget=100, layers=2, max_length=64,
                              val_size=150, test_size=300, concurrent=2, trainer_threads=1, precision=args.precision,
                              keep=None, cells=1)
    grid = attack_throughput.make_grid(opts.trials, "full", opts.steps)
    with tempfile.TemporaryDirectory(prefix="sdm-packing-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        start(opts, grid, root / "alone").wait()
        alone = time.perf_counter() - started
        started = time.perf_counter()
        pair = [start(opts, grid, root / f"pair-{i}") for i in (0, 1)]
        codes = [p.wait() for p in pair]
        both = time.perf_counter() - started
        if any(codes) or not all((root / name / "result.json").exists() for name in ("alone", "pair-0", "pair-1")):
            sys.exit(f"a Trainer side failed: exit codes {codes}")
        print("| run | mean compute a trial, s | search wall, s | process wall, s |\n|---|---:|---:|---:|")
        print("| one alone | %.2f | %.1f | %.1f |" % (*mean_compute(root / "alone"), alone))
        for i in (0, 1):
            print(f"| two at once, copy {i + 1} | " + "%.2f | %.1f | " % mean_compute(root / f"pair-{i}")
                  + ("%.1f |" % both if i == 0 else "— |"))


if __name__ == "__main__":
    main()
