"""One real `sdm run` of the smoke config through the CLI, a local Ray instance, Tune, Optuna and Parquet."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from harness.results import SCHEMA_VERSION, read_cells, read_curves, read_trials
from tests.conftest import SMOKE, SmokeRun, sdm_command


def sdm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*sdm_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=900)


def test_run_writes_trials_and_cells(smoke_run: SmokeRun):
    out = smoke_run.out
    cells = read_cells(out).to_pylist()
    # 2 defenses x 1 attack x 2 tasks x 2 budgets x 1 seed
    assert len(cells) == 8 and {c["status"] for c in cells} == {"ok"}
    assert {(c["defense"], c["task"], c["budget"]) for c in cells} == {
        (d, t, b) for d in ("random-init", "bert") for t in ("gender", "profession") for b in (30, 60)
    }
    trials = read_trials(out).to_pylist()
    for cell in cells:
        rows = [t for t in trials if t["cell_id"] == cell["cell_id"]]
        search = [t for t in rows if t["phase"] == "search"]
        reruns = [t for t in rows if t["phase"] == "rerun"]
        assert 1 <= len(search) <= 3 and len(reruns) == 2
        # selection never sees test: search trials carry no test accuracy
        assert all(t["test_accuracy"] is None for t in search)
        assert all(0.0 <= t["test_accuracy"] <= 1.0 for t in reruns)
        best = max(t["val_accuracy"] for t in search if t["status"] == "ok")
        assert cell["best_val_accuracy"] == pytest.approx(best)
        assert cell["test_accuracy"] == pytest.approx(sum(t["test_accuracy"] for t in reruns) / 2)
        assert all(json.loads(t["hyperparameters"]) == json.loads(cell["best_hyperparameters"]) for t in reruns)
        # the selected trial replayed with its own seed reproduces it exactly, and is then scored on test
        [replay] = [t for t in rows if t["phase"] == "replay"]
        [selected] = [t for t in search if t["status"] == "ok" and t["val_accuracy"] == best][:1]
        same = ("trial_seed", "hyperparameters")
        assert [replay[k] for k in same] == [selected[k] for k in same]
        assert cell["found_val_accuracy"] == best and 0.0 <= cell["found_test_accuracy"] <= 1.0
        assert replay["test_accuracy"] == cell["found_test_accuracy"]
        params = json.loads(search[0]["hyperparameters"])
        assert 5 <= params["steps"] <= 20 and params["batch_size"] in (8, 16) and params["mode"] in ("probe", "full")
    row = trials[0]
    assert row["schema_version"] == SCHEMA_VERSION and row["model_id"].startswith("tiny-bert")
    assert row["data_fingerprint"] and row["defense_fingerprint"] and row["torch_version"]
    meta = pq.read_schema(out / "cells.parquet").metadata
    assert meta[b"sdm_bench_schema_version"] == str(SCHEMA_VERSION).encode()
    assert "cells:" in smoke_run.stdout and "leaderboard" in smoke_run.stdout
    # curves (tests/test_curves.py checks them point by point): test checks for reruns only, of both reruns
    curves = read_curves(out).to_pylist()
    assert pq.read_table(out / "curves.parquet").num_rows == len(curves) and "curves:" in smoke_run.stdout
    assert {(c["phase"], c["split"]) for c in curves} == {("search", "validation"), ("rerun", "validation"),
                                                            ("rerun", "test")}
    assert {(c["cell_id"], c["trial_id"]) for c in curves if c["split"] == "test"} == {
        (cell["cell_id"], f"rerun-{i}") for cell in cells for i in range(2)}
    assert all(c["search_best_trial"] is not None and c["search_still_improving"] is not None for c in cells)
    assert (out / "leaderboard" / "leaderboard.html").stat().st_size > 0


def test_rerun_skips_finished_cells(smoke_run: SmokeRun):
    out = smoke_run.out
    before = read_trials(out).num_rows
    result = smoke_run.again()
    assert result.returncode == 0, result.stderr[-2000:]
    assert "0 cells run, 8 already finished" in result.stderr
    assert read_trials(out).num_rows == before


def test_a_labelled_entry_runs_beside_its_plugin_and_merges_onto_one_leaderboard(
    smoke_run: SmokeRun, tmp_path: Path
) -> None:
    """An ablation: bert again with other params under its own label, in a run of its own, merged with the first."""
    out = smoke_run.out
    ablation = tmp_path / "ablation"
    result = sdm("run", str(SMOKE), "--out", str(ablation), "--set",
                 "defenses=[{name: bert, label: bert-long, params: {steps: 40, lr: 1.0e-3, batch_size: 16}}]",
                 "--set", "attacks=[{name: finetune, label: finetune-short, space: {steps: {type: fixed, value: 5}}}]",
                 "--set", "tasks.attacked=[harmful]", "--set", "budgets=[30]", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    cells = read_cells(ablation).to_pylist()
    assert [(c["defense"], c["attack"], c["status"]) for c in cells] == [("bert-long", "finetune-short", "ok")]
    assert cells[0]["cell_id"].startswith("bert-long__finetune-short__gender__b30")
    # its own weights: the label names the cells, the params decide what trains
    bert = {c["defense_fingerprint"] for c in read_cells(out).to_pylist() if c["defense"] == "bert"}
    assert cells[0]["defense_fingerprint"] not in bert
    board = tmp_path / "board"
    merged = sdm("leaderboard", str(out), str(ablation), "--out", str(board), cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr[-2000:]
    summary = {r["defense"]: r for r in pq.read_table(board / "summary.parquet").to_pylist()}
    assert {"random-init", "bert", "bert-long"} <= set(summary)
    assert summary["bert-long"]["harmful_gap"] is not None  # paired with the first run's random-init at 30


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path):
    result = sdm("run", str(SMOKE), "--out", str(tmp_path / "dry"), "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "8 cells to run, at most 48 trials" in result.stdout
    assert not (tmp_path / "dry").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("defenses.0.name=random-int", "unknown defense 'random-int' (did you mean 'random-init'?)"),
        ("attacks.0.name=fintune", "unknown attack 'fintune' (did you mean 'finetune'?)"),
        ("search.max_concurent=2", "unknown field 'search.max_concurent' (did you mean 'max_concurrent'?)"),
        ("search.num_samples=lots", "search.num_samples"),
        ("attacks.0.space.stepz=3", "no search dimension 'stepz' (did you mean 'steps'?)"),
        ("budgets=[0]", "budget 0 must be a positive"),
        ("budgets=[100000]", "100000"),
        ("defenses.1.name=random-init", "defenses: 'random-init' appears twice; give one of them another label"),
        ("defenses.1.label=random-init", "label 'random-init' is kept for the random-init defense"),
        ("defenses.1.label=bert/2", "defenses.1.label"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path: Path, override: str, message: str):
    out = tmp_path / "bad"
    result = sdm("run", str(SMOKE), "--out", str(out), "--set", override, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
