"""Experiment tracking through Ray Tune's MLflow logger callback, against a local file-based MLflow store."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from harness.configfile import load_config
from harness.errors import UserError
from tests.conftest import SMOKE, sdm_command

# MLflow 3 keeps its file store in maintenance mode, refused unless this is set: the local store of a test.
FILE_STORE = {"MLFLOW_ALLOW_FILE_STORE": "true"}


def test_tracking_is_off_by_default_and_outside_the_config_hash(tmp_path: Path):
    plain = load_config(SMOKE)
    tracked = load_config(SMOKE, [f"tracking.mlflow.tracking_uri=file:{tmp_path}/mlruns"])
    assert plain.tracking.mlflow is None
    assert tracked.tracking.mlflow.tracking_uri == f"file:{tmp_path}/mlruns"
    assert plain.content_hash() == tracked.content_hash()  # a view of the run: never a different experiment


def test_a_tracker_that_is_not_installed_is_refused_before_anything_runs(tmp_path: Path, monkeypatch):
    import importlib.util

    from harness.plan import validate_plugins

    cfg = load_config(SMOKE, [f"tracking.mlflow.tracking_uri=file:{tmp_path}/mlruns"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(UserError, match=r"smoke.yaml: tracking.mlflow needs the mlflow package"):
        validate_plugins(cfg, str(SMOKE))


def test_a_local_store_mlflow_refuses_is_one_line_before_anything_runs(tmp_path: Path, monkeypatch):
    from harness.plan import validate_plugins

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    cfg = load_config(SMOKE, [f"tracking.mlflow.tracking_uri=file:{tmp_path}/mlruns"])
    with pytest.raises(UserError, match=r"tracking.mlflow.tracking_uri 'file:.*': The filesystem tracking backend"):
        validate_plugins(cfg, str(SMOKE))
    assert not (tmp_path / "mlruns").exists()


def test_each_search_trial_becomes_an_mlflow_run_tagged_with_its_cell(tmp_path: Path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from harness.results import read_trials

    store = f"file:{tmp_path / 'mlruns'}"
    out = tmp_path / "run"
    result = subprocess.run(
        [*sdm_command(), "run", str(SMOKE), "--out", str(out), "--set", "defenses=[{name: random-init}]",
         "--set", "tasks.attacked=[harmful]", "--set", "budgets=[30]", "--set", "search.num_samples=2",
         "--set", "search.reruns=1", "--set", f"tracking.mlflow.tracking_uri={store}",
         "--set", "tracking.mlflow.experiment_name=sdm-smoke"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, **FILE_STORE},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("sdm-smoke")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    search = [r for r in read_trials(out).to_pylist() if r["phase"] == "search"]
    assert len(runs) == len(search) == 2
    assert {r.data.tags["cell_id"] for r in runs} == {search[0]["cell_id"]}
    assert {r.data.tags["defense"] for r in runs} == {"random-init"}
    for run in runs:
        assert "lr" in run.data.params and "steps" in run.data.params
        assert any(name.startswith("val") or "accuracy" in name for name in run.data.metrics), run.data.metrics
