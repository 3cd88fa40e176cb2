"""Cluster width, on a real local Ray instance: the defense trainings a run needs train side by side wherever there
is room, and cells are searched at once, with the results a run of one cell at a time gives."""

from __future__ import annotations

import io
import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest
import ray
import torch
from rich.console import Console

from attacks.finetune import Finetune
from harness.configfile import load_config
from harness.plugins import Defense, DefenseContext
from harness.results import read_cells, read_trials
from harness.runner import run_experiment
from tests.conftest import ROOT, SMOKE

SPY_DIR = "SDM_TEST_WIDTH_SPY"
TRAIN_SECONDS = 5.0  # longer than a worker process takes to start on a busy machine


class Sleepy(Defense):
    """The base encoder, after a pause long enough that two trainings run one after another cannot overlap: each
    writes when it ran, so the test can see whether they ran at once."""

    seconds = TRAIN_SECONDS

    def train(self, ctx: DefenseContext) -> dict[str, torch.Tensor]:
        started = time.time()
        time.sleep(self.seconds)
        record = {"seed": ctx.seed, "start": started, "end": time.time(), "pid": os.getpid()}
        (Path(os.environ[SPY_DIR]) / f"seed-{ctx.seed}.json").write_text(json.dumps(record))
        return ctx.base_encoder().state_dict()


class Slow(Sleepy):
    """`Sleepy`, long enough for another defense's cells to be searched while it trains, on a busy machine too."""

    seconds = 30.0


class SpyFinetune(Finetune):
    """`finetune`, after a pause long enough for trials of two cells to overlap if they run at once; each trial
    writes when it ran, and on which cell (its budget: the rows it trains on)."""

    def run(self, ctx, config, seed, score_test):
        started = time.time()
        node = ray.get_runtime_context().get_node_id()
        (Path(os.environ[SPY_DIR]) / f"started-{uuid.uuid4().hex}.json").write_text(json.dumps({"node": node}))
        time.sleep(float(os.environ.get(PAUSE_VAR, TRIAL_PAUSE)))
        outcome = super().run(ctx, config, seed, score_test)
        record = {"rows": len(ctx.data.train), "start": started, "end": time.time()}
        (Path(os.environ[SPY_DIR]) / f"trial-{uuid.uuid4().hex}.json").write_text(json.dumps(record))
        return outcome


TRIAL_PAUSE = 0.5
PAUSE_VAR = "SDM_TEST_WIDTH_PAUSE"
SPY_ATTACK = {"name": "tests.test_width:SpyFinetune",
              "space": {"steps": {"type": "int", "low": 5, "high": 20},
                        "batch_size": {"type": "choice", "values": [8, 16]}}}


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


def test_a_defense_s_cells_are_searched_while_another_defense_still_trains(local_ray: Path, tmp_path: Path) -> None:
    # Two CPUs: both trainings begin at once; random-init's ends at once and frees a CPU for a trial worker.
    cfg = load_config(SMOKE, [
        "defenses=[{name: random-init}, {name: 'tests.test_width:Slow'}]", "budgets=[30]", "tasks.attacked=[harmful]",
        f"attacks=[{json.dumps(SPY_ATTACK)}]", "search.num_samples=2", "search.reruns=1",
        "defense_training.resources={cpu: 1}", f"output={tmp_path / 'run'}",
    ])
    summary = run_experiment(cfg, origin="smoke.yaml", console=Console(file=io.StringIO()))
    assert summary.failed == []
    slow = json.loads((local_ray / "seed-0.json").read_text())
    trials = [json.loads(p.read_text()) for p in local_ray.glob("trial-*.json")]
    assert len(trials) == 2 * (2 + 1 + 1)  # both cells searched in full, rerun and replayed
    # random-init's cell ran before the slow training ended (its own cell cannot start before then).
    assert min(t["start"] for t in trials) < slow["end"], (slow, trials)
    assert sum(t["start"] > slow["end"] for t in trials) >= 3  # the slow defense's cell: after its training
    cells = read_cells(tmp_path / "run").to_pylist()
    assert len({c["defense"] for c in cells}) == 2 and all(c["status"] == "ok" for c in cells), cells


def test_cells_are_searched_at_once_with_the_results_of_one_cell_at_a_time(local_ray: Path, tmp_path: Path) -> None:
    attack = SPY_ATTACK
    # Two cells (budgets 30 and 60), each a search of 6 trials in batches of 2 (a plateau may end it sooner).
    base = ["defenses=[{name: random-init}]", "tasks.attacked=[harmful]", f"attacks=[{json.dumps(attack)}]",
            "search.num_samples=6", "search.max_concurrent=2", "search.plateau_patience=2", "search.reruns=1"]
    runs = {}
    for name, extra in (("one at a time", ["cluster.cells_at_once=1"]), ("at once", [])):
        for old in local_ray.glob("trial-*.json"):
            old.unlink()
        cfg = load_config(SMOKE, [*base, *extra, f"output={tmp_path / name}"])
        summary = run_experiment(cfg, origin="smoke.yaml", console=Console(file=io.StringIO()))
        assert summary.failed == []
        spans = {}
        records = [json.loads(p.read_text()) for p in local_ray.glob("trial-*.json")]
        # Every trial trained on its own cell's budget rows (cells in flight share the workers, never payloads).
        counts = {budget: sum(r["cell_id"].endswith(f"_b{budget}__s0") for r in read_trials(tmp_path / name).to_pylist())
                  for budget in (30, 60)}
        assert counts == {rows: sum(r["rows"] == rows for r in records) for rows in (30, 60)}, name
        for record in records:
            start, end = spans.get(record["rows"], (float("inf"), float("-inf")))
            spans[record["rows"]] = (min(start, record["start"]), max(end, record["end"]))
        runs[name] = (spans, read_cells(tmp_path / name), read_trials(tmp_path / name))
    for name, overlapping in (("one at a time", False), ("at once", True)):
        (start_a, end_a), (start_b, end_b) = runs[name][0][30], runs[name][0][60]
        assert (max(start_a, start_b) < min(end_a, end_b)) is overlapping, (name, runs[name][0])

    # Every cell, every trial: the same configurations, results and selection, whichever way the cells ran.
    def cells(table) -> list[tuple]:
        keep = ["cell_id", "status", "n_trials", "best_hyperparameters", "best_val_accuracy", "test_accuracy",
                "search_best_so_far", "search_best_trial"]
        return sorted(tuple(row[k] for k in keep) for row in table.to_pylist())

    def trials(table) -> list[tuple]:
        keep = ["cell_id", "phase", "hyperparameters", "trial_seed", "val_accuracy", "test_accuracy", "steps_run",
                "status"]
        return sorted(tuple(row[k] for k in keep) for row in table.to_pylist())

    assert cells(runs["at once"][1]) == cells(runs["one at a time"][1])
    assert trials(runs["at once"][2]) == trials(runs["one at a time"][2])
    assert len(trials(runs["at once"][2])) >= 2 * (2 + 1)


def test_a_driver_killed_with_cells_in_flight_resumes_each_of_them_once(tmp_path: Path) -> None:
    """SIGKILL of the driver while three cells are searched at once, two of them with a finished trial saved; then
    --resume: every cell recorded once, every trial once, and the interrupted searches restored, not started over."""
    from tests.test_reliability import digest, sdm, start, text, wait_for

    spy = tmp_path / "spy"
    spy.mkdir()
    env = {SPY_DIR: str(spy), PAUSE_VAR: "1.0", "PYTHONPATH": str(ROOT), "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    out = tmp_path / "run"
    # Four cells (budgets 30 and 60, seeds 0 and 1), four trials each, one at a time: two workers, three cells in
    # flight.
    sets = ["defenses=[{name: random-init}]", "tasks.attacked=[harmful]", "seeds=[0, 1]",
            f"attacks=[{json.dumps(SPY_ATTACK)}]", "search.num_samples=4", "search.max_concurrent=1",
            "search.plateau_patience=4", "search.reruns=1"]
    args = ["run", str(SMOKE), "--out", str(out), *[a for s in sets for a in ("--set", s)]]
    cells = [f"random-init__tests.test_width:SpyFinetune__gender__b{b}__s{s}" for s in (0, 1) for b in (30, 60)]

    def saved(cell: str) -> set[str]:
        """The trials of the cell's search that its last saved state holds as finished."""
        finished: set[str] = set()
        for state in (out / "tune" / cell).glob("experiment_state-*.json"):
            try:
                trials = json.loads(text(state)).get("trial_data", [])
            except json.JSONDecodeError:
                continue  # being replaced
            finished |= {json.loads(t[0])["trial_id"] for t in trials if '"TERMINATED"' in t[0]}
        return finished

    driver = start(*args, cwd=tmp_path, env=env)
    wait_for(lambda: sum(bool(saved(c)) for c in cells) >= 2, driver, "two cells in flight with a saved trial",
             poll=0.05)
    recorded = {p.stem: digest(p) for p in (out / "cells").glob("*.parquet")}
    before = {c: saved(c) for c in cells if c not in recorded}
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    assert sum(bool(ids) for ids in before.values()) >= 2, (before, recorded)

    resumed = sdm(*args, "--resume", cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = read_cells(out).to_pylist()
    assert sorted(c["cell_id"] for c in rows) == sorted(cells) and {c["status"] for c in rows} == {"ok"}
    trials = read_trials(out).to_pylist()
    keys = [(t["cell_id"], t["phase"], t["trial_id"]) for t in trials]
    assert len(keys) == len(set(keys))  # no trial twice
    for cell in rows:
        search = [t for t in trials if t["cell_id"] == cell["cell_id"] and t["phase"] == "search"]
        assert len(search) == cell["n_trials"] == 4 and len({t["hyperparameters"] for t in search}) == 4
        assert sum(t["cell_id"] == cell["cell_id"] and t["phase"] == "rerun" for t in trials) == 1
    for cell, digest_before in recorded.items():  # cells recorded before the kill are left as they were
        assert digest(out / "cells" / f"{cell}.parquet") == digest_before
    for cell, finished in before.items():  # interrupted searches were restored: their finished trials are kept
        assert finished <= {t["trial_id"] for t in trials if t["cell_id"] == cell}, cell
