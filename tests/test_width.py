"""Cluster width: the defense trainings a run needs are submitted to Ray at once and train side by side wherever
there is room, on a real local Ray instance."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest
import ray
import torch
from rich.console import Console

from harness.configfile import load_config
from harness.plugins import Defense, DefenseContext
from harness.results import read_cells
from harness.runner import run_experiment
from tests.conftest import ROOT, SMOKE

SPY_DIR = "SDM_TEST_WIDTH_SPY"
TRAIN_SECONDS = 3.0


class Sleepy(Defense):
    """The base encoder, after a pause long enough that two trainings run one after another cannot overlap: each
    writes when it ran, so the test can see whether they ran at once."""

    def train(self, ctx: DefenseContext) -> dict[str, torch.Tensor]:
        started = time.time()
        time.sleep(TRAIN_SECONDS)
        record = {"seed": ctx.seed, "start": started, "end": time.time(), "pid": os.getpid()}
        (Path(os.environ[SPY_DIR]) / f"seed-{ctx.seed}.json").write_text(json.dumps(record))
        return ctx.base_encoder().state_dict()


@pytest.fixture
def local_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    spy = tmp_path / "spy"
    spy.mkdir()
    # Set before Ray starts, so its worker processes can import this module and find the spy folder.
    monkeypatch.setenv(SPY_DIR, str(spy))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        yield spy
    finally:
        ray.shutdown()


def test_defense_trainings_run_side_by_side_when_there_is_room(local_ray: Path, tmp_path: Path) -> None:
    cfg = load_config(SMOKE, [
        "defenses=[{name: 'tests.test_width:Sleepy'}]", "seeds=[0, 1]", "budgets=[30]", "tasks.attacked=[harmful]",
        "search.num_samples=1", "search.reruns=1", "defense_training.resources={cpu: 1}",
        f"output={tmp_path / 'run'}",
    ])
    summary = run_experiment(cfg, origin="smoke.yaml", console=Console(file=io.StringIO()))
    assert summary.failed == []
    runs = [json.loads((local_ray / f"seed-{seed}.json").read_text()) for seed in (0, 1)]
    assert runs[0]["pid"] != runs[1]["pid"]  # two workers, each with one of the instance's two CPUs
    assert max(r["start"] for r in runs) < min(r["end"] for r in runs), runs  # their times overlap
    cells = read_cells(tmp_path / "run").to_pylist()
    assert sorted((c["seed"], c["defense_seed"], c["status"]) for c in cells) == [(0, 0, "ok"), (1, 1, "ok")]
