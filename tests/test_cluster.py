"""A real two-node Ray cluster on one machine: `sdm run --address` spreads a cell's trials over both nodes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from ray.cluster_utils import Cluster

from harness.results import read_cells, read_trials
from tests.conftest import SMOKE, sdm_command


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
    assert sorted(t["phase"] for t in trials) == ["rerun", "rerun", "search", "search", "search"]
    assert all(t["status"] == "ok" and t["val_accuracy"] is not None for t in trials)
    nodes = {node.node_id for node in two_nodes.list_all_nodes()}
    assert len(nodes) == 2
    assert {t["node_id"] for t in trials} == nodes, [t["node_id"] for t in trials]
    assert any((tmp_path / "shared").iterdir())  # Tune's state went to the configured storage path
