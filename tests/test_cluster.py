"""A real two-node Ray cluster on one machine: `sdm run --address` spreads a cell's trials over both nodes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from ray.cluster_utils import Cluster

from harness.results import read_cells, read_trials
from tests.conftest import ROOT, SMOKE, sdm_command
from tests.test_width import PAUSE_VAR, SPY_ATTACK, SPY_DIR


@pytest.fixture
def two_nodes():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def test_a_run_on_a_two_node_cluster_uses_both_nodes(two_nodes: Cluster, tmp_path: Path):
    out = tmp_path / "run"
    overrides = [
        "defenses=[{name: random-init}]", "budgets=[30]", "tasks.attacked=[harmful]",
        "search.num_samples=3", "search.max_concurrent=2", "search.reruns=2",
        f"cluster.storage_path={tmp_path / 'shared'}",
    ]
    args = [arg for o in overrides for arg in ("--set", o)]
    result = subprocess.run([*sdm_command(), "run", str(SMOKE), "--out", str(out), "--address", two_nodes.address,
                             *args], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    [cell] = read_cells(out).to_pylist()
    assert cell["status"] == "ok" and cell["n_trials"] == 3 and cell["n_reruns"] == 2
    trials = read_trials(out).to_pylist()
    assert sorted(t["phase"] for t in trials) == ["replay", "rerun", "rerun", "search", "search", "search"]
    assert all(t["status"] == "ok" and t["val_accuracy"] is not None for t in trials)
    nodes = {node.node_id for node in two_nodes.list_all_nodes()}
    assert len(nodes) == 2
    assert {t["node_id"] for t in trials} == nodes, [t["node_id"] for t in trials]
    assert any((tmp_path / "shared").iterdir())  # Tune's state went to the configured storage path


def test_a_worker_node_lost_mid_run_leaves_every_cell_finished_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The worker node leaves while one of its trials trains: that trial fails and is retried on the head, the pool
    goes on with the workers it has left, and every cell completes (or is marked failed), each trial written once."""
    from tests.test_reliability import start, stderr_of, wait_for

    spy = tmp_path / "spy"
    spy.mkdir()
    # Set before the cluster starts: its nodes' workers import the spy attack and write to the spy folder.
    for name, value in ((SPY_DIR, str(spy)), (PAUSE_VAR, "1.0"), ("PYTHONPATH", str(ROOT))):
        monkeypatch.setenv(name, value)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        worker_node = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        head = cluster.head_node.node_id
        out = tmp_path / "run"
        # Four cells, four trials each, one at a time: a trial worker on each node, three cells in flight.
        sets = ["defenses=[{name: random-init}]", "tasks.attacked=[harmful]", "seeds=[0, 1]",
                f"attacks=[{json.dumps(SPY_ATTACK)}]", "search.num_samples=4", "search.max_concurrent=1",
                "search.plateau_patience=4", "search.reruns=1", "search.max_failures=2",
                f"cluster.storage_path={tmp_path / 'shared'}"]
        driver = start("run", str(SMOKE), "--out", str(out), "--address", cluster.address,
                       *[a for s in sets for a in ("--set", s)], cwd=tmp_path)

        def training_on_the_worker_node() -> bool:
            return any(json.loads(p.read_text())["node"] == worker_node.node_id for p in spy.glob("started-*.json"))

        wait_for(training_on_the_worker_node, driver, "a trial on the worker node", poll=0.05)
        cluster.remove_node(worker_node)
        try:
            driver.wait(timeout=600)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the run did not end after the node left: {stderr_of(driver)[-3000:]}") from None
        finally:
            driver.kill()
        stderr = stderr_of(driver)
        assert driver.returncode in (0, 1), stderr[-3000:]  # 1: a cell failed, which the run says
    finally:
        cluster.shutdown()
    cells = read_cells(out).to_pylist()
    assert len(cells) == 4 and all(c["status"] in ("ok", "failed") for c in cells)
    trials = read_trials(out).to_pylist()
    keys = [(t["cell_id"], t["phase"], t["trial_id"]) for t in trials]
    assert len(keys) == len(set(keys))
    for cell in cells:
        search = [t for t in trials if t["cell_id"] == cell["cell_id"] and t["phase"] == "search"]
        assert len(search) == cell["n_trials"] == 4, cell["cell_id"]
    # What ran after the node left ran on the head: the run went on without the lost node.
    assert any(t["node_id"] == head for t in trials) and all(c["status"] == "ok" for c in cells), [
        (c["cell_id"], c["status"]) for c in cells]
