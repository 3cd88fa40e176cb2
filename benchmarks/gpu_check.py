"""GPU check: the quick plan (`configs/quick.yaml`) end to end on CUDA, with fractional GPUs per trial and bf16.

Runs `sdm run` in this process on a local Ray instance of this machine (its GPUs included) with an empty defense
cache, every trial worker holding `--gpu-share` of a GPU (four on one GPU by default) and the defense trainings a
whole one, then reports:

- trials per hour (search trials and reruns, over the run's wall time, defense training included);
- GPU busy share: the mean of `nvidia-smi`'s utilization.gpu, sampled every second while the run is on (or
  `torch.cuda.utilization`, which needs pynvml, where there is no nvidia-smi);
- peak GPU memory per trial worker: the largest `used_memory` `nvidia-smi` showed for each worker process
  (a worker runs one trial at a time, so this is the peak of its largest trial), against its share of the device;
- what the rows recorded: the hardware and precision of the trials (a GPU's name and bf16 expected).

It exits 1 if a cell failed or a trial did not run on the GPU. On a machine without CUDA it says so in one line and
exits 0. Meant to finish in under 5 minutes on one GPU.

    .venv/bin/python benchmarks/gpu_check.py [--gpu-share 0.25] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class GpuSampler(threading.Thread):
    """Samples the GPU's utilization and each process's GPU memory every `interval` seconds until stopped."""

    def __init__(self, interval: float = 1.0):
        super().__init__(daemon=True)
        self.interval = interval
        self.busy: list[float] = []  # utilization.gpu, percent
        self.peak_mib: dict[int, float] = {}  # pid -> largest used_memory seen
        self.workers: set[int] = set()  # pids of trial workers seen
        self.source = "nvidia-smi" if shutil.which("nvidia-smi") else "torch.cuda.utilization"
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._sample()
            except (OSError, subprocess.SubprocessError, RuntimeError, ValueError, ModuleNotFoundError):
                self.source = "unavailable"
                return

    def _sample(self) -> None:
        if self.source != "nvidia-smi":
            import torch

            self.busy.append(float(torch.cuda.utilization()))
            return
        query = ["nvidia-smi", "--format=csv,noheader,nounits"]
        util = subprocess.run([*query, "--query-gpu=utilization.gpu"], capture_output=True, text=True, timeout=10)
        self.busy.append(statistics.fmean(float(v) for v in util.stdout.split()))
        apps = subprocess.run([*query, "--query-compute-apps=pid,used_memory"], capture_output=True, text=True,
                              timeout=10)
        self.workers |= worker_pids()
        for line in apps.stdout.strip().splitlines():
            pid, used = (v.strip() for v in line.split(","))
            self.peak_mib[int(pid)] = max(self.peak_mib.get(int(pid), 0.0), float(used))

    def stop(self) -> None:
        self._stop.set()
        self.join()


def worker_pids() -> set[int]:
    """The processes of this run's trial workers (Ray names them after the actor class)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return {int(line.split()[0]) for line in out.splitlines()[1:] if "ray::AttackWorker" in line}


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; nothing to check")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-share", type=float, default=0.25, help="GPU share of each trial worker")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    args = parser.parse_args()

    from rich.console import Console

    from harness.configfile import load_config
    from harness.results import read_cells, read_trials
    from harness.runner import run_experiment

    work = Path(tempfile.mkdtemp(prefix="sdm-gpu-check-"))
    os.environ["SDM_CACHE_DIR"] = str(work / "cache")  # empty: the defenses are trained on the GPU now
    slots = max(1, int(torch.cuda.device_count() / args.gpu_share))
    cfg = load_config(ROOT / "configs" / "quick.yaml", [
        f"output={work / 'run'}", "model.precision=bf16", f"search.max_concurrent={slots}",
        f"search.resources_per_trial={{cpu: 1, gpu: {args.gpu_share}}}", "defense_training.resources={cpu: 1, gpu: 1}",
        *args.overrides,
    ])
    sampler = GpuSampler()
    sampler.start()
    started = time.perf_counter()
    summary = run_experiment(cfg, origin="configs/quick.yaml", console=Console(stderr=True))
    wall = time.perf_counter() - started
    sampler.stop()

    trials = read_trials(summary.run_dir).to_pylist()
    cells = read_cells(summary.run_dir).to_pylist()
    share_mib = torch.cuda.get_device_properties(0).total_memory / 2**20 * args.gpu_share
    peaks = sorted((mib for pid, mib in sampler.peak_mib.items() if pid in sampler.workers), reverse=True)
    print(f"device: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}; {slots} trial workers of "
          f"{args.gpu_share:g} GPU each, precision {cfg.model.precision}")
    print(f"trials: {len(trials)} in {wall:.0f}s = {len(trials) / wall * 3600:.0f} trials/hour; cells "
          f"{sum(c['status'] == 'ok' for c in cells)}/{len(cells)} ok")
    busy = f"{statistics.fmean(sampler.busy):.0f}%" if sampler.busy else "unavailable"
    print(f"GPU busy share ({sampler.source}, {len(sampler.busy)} samples): {busy}")
    print(f"peak GPU memory per worker process (MiB, its share {share_mib:.0f}): "
          + (", ".join(f"{p:.0f}" for p in peaks) or "unavailable"))
    ran_on = sorted({(t["hardware"], t["precision"]) for t in trials if t["status"] == "ok"})
    print(f"rows record: {ran_on}")
    on_gpu = all(not hardware.startswith("cpu ") for hardware, _ in ran_on)
    return 0 if on_gpu and not summary.failed else 1


if __name__ == "__main__":
    sys.exit(main())
