"""ASHA really cuts trials short: a stopped trial's worker stops training, and a real search with ASHA records
trials stopped early with the steps their workers actually ran."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import ray

from attacks.finetune import Finetune
from harness.classifier import Classifier
from harness.config import Resources
from harness.configfile import load_config
from harness.errors import UserError
from harness.models import build_encoder
from harness.plugins import CellData
from harness.results import read_cells, read_curves, read_trials
from harness.plan import validate_plugins
from harness.training import Features, encode
from harness.pool import WorkerPool
from harness.workers import CellPayload
from tests.conftest import SMOKE, sdm_command
from tests.test_attacks import TINY, easy_split


def test_asha_settings_are_checked_before_anything_runs():
    with pytest.raises(UserError, match="set eval_every > 0"):
        load_config(SMOKE, ["search.asha={grace_period: 10}"])
    cfg = load_config(SMOKE, ["search.eval_every=5", "search.asha={grace_period: 20}"])
    with pytest.raises(UserError, match=r"grace_period 20 is not below the most steps attack 'finetune' runs \(20\)"):
        validate_plugins(cfg, "smoke.yaml")
    validate_plugins(load_config(SMOKE, ["search.eval_every=5", "search.asha={grace_period: 10}"]), "smoke.yaml")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_stopping_a_trial_stops_its_worker(local_ray):
    data = CellData(easy_split(60, 1), easy_split(40, 2), easy_split(40, 3), "y", 2)
    state = build_encoder(TINY).state_dict()
    frozen = Classifier(build_encoder(TINY), 2)
    features = Features(encode(frozen, data.train), encode(frozen, data.val), None)
    attack = Finetune(Finetune.Params())
    payload = CellPayload(TINY, state, data, features, attack, eval_every=2, cpus=1)
    holder = [ray.put(payload)]
    config = {"lr": 1e-3, "steps": 100_000, "batch_size": 8, "mode": "full", "optimizer": "adamw",
              "weight_decay": 0.0, "momentum": 0.9, "warmup_frac": 0.0, "schedule": "constant"}
    pool = WorkerPool(1, Resources())
    try:
        lease, worker = pool.borrow(timeout=60)
        done = worker.trial.remote(holder, config, 7, "trial-a", pool.lender, lease)
        deadline = time.monotonic() + 120
        while not (news := ray.get(worker.checks.remote(lease, 0), timeout=60))[0]:
            assert time.monotonic() < deadline and not news[1], news
        [first, *_], ended, node = news
        assert first[0] == 2 and 0.0 <= first[1] <= 1.0 and not ended and node  # (step, accuracy), node id
        pool.stop(["trial-a"])
        result = ray.get(done, timeout=60)  # returns long before 100,000 steps
        assert result["stopped"] and 2 <= result["steps_run"] < 1000
        assert pool.borrow(timeout=30)[1] == worker  # the worker gave itself back to the pool
        assert pool.settle(["trial-a"]) == {"trial-a": result["steps_run"]}  # the steps it really ran, for the trials table
    finally:
        pool.shutdown()


def test_asha_search_cuts_trials_short(tmp_path: Path):
    out = tmp_path / "asha"
    # No early stopping on patience: only ASHA ends a trial before its steps.
    # The desired task (28 classes) and a wide learning-rate range spread the trials' validation accuracies, so the
    # halving at each rung has a worse half to stop: on the binary task the trials can all tie at the majority class.
    attack = {"name": "finetune", "params": {"patience": 1000},
              "space": {"mode": "full", "batch_size": 8, "steps": {"type": "int", "low": 150, "high": 200},
                        "lr": {"type": "loguniform", "low": 1.0e-5, "high": 1.0e-1}}}
    overrides = [
        "defenses=[{name: random-init}]", "budgets=[60]", "tasks.attacked=[desired]",
        f"attacks=[{json.dumps(attack)}]", "search.num_samples=5", "search.plateau_patience=10",
        "search.reruns=1", "search.eval_every=5", "search.asha={grace_period: 10, reduction_factor: 2}",
    ]
    args = [arg for o in overrides for arg in ("--set", o)]
    result = subprocess.run([*sdm_command(), "run", str(SMOKE), "--out", str(out), *args], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    [cell] = read_cells(out).to_pylist()
    assert cell["status"] == "ok"
    search = [t for t in read_trials(out).to_pylist() if t["phase"] == "search"]
    assert len(search) == 5
    stopped = [t for t in search if t["status"] == "stopped"]
    assert stopped, [(t["status"], t["steps_run"]) for t in search]
    # The steps a stopped trial's worker ran before it stopped, no more than its configuration asked for, and fewer
    # for a trial cut at a rung below them (rungs at steps 10, 20, 40, 80, 160: one cut at 160 may have finished).
    asked = {t["trial_id"]: json.loads(t["hyperparameters"])["steps"] for t in stopped}
    assert all(t["steps_run"] is not None and t["steps_run"] <= asked[t["trial_id"]] for t in stopped)
    assert any(t["steps_run"] < asked[t["trial_id"]] for t in stopped), [(t["steps_run"], asked) for t in stopped]
    assert all(t["status"] == "ok" for t in search if t not in stopped)
    # A stopped trial's curve: the validation checks it reported before the cut (it is worth the best of them).
    curves = read_curves(out).to_pylist()
    for t in stopped:
        checks = [(c["step"], c["accuracy"]) for c in curves if c["trial_id"] == t["trial_id"]]
        assert checks and all(c["split"] == "validation" for c in curves if c["trial_id"] == t["trial_id"])
        assert all(step % 5 == 0 and step <= t["steps_run"] for step, _ in checks)
        assert t["val_accuracy"] == pytest.approx(max(a for _, a in checks))
    best = json.loads(cell["best_hyperparameters"])
    assert best in [json.loads(t["hyperparameters"]) for t in search if t["status"] == "ok"]
