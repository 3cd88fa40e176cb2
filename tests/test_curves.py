"""Attacker compute curves: every trial's validation checks and the reruns' test checks, written per cell and per run
by a real smoke run, and the leaderboard's compute cost and curves read from them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from harness import results
from harness.leaderboard import CURVES_SCHEMA, aggregate, build_leaderboard
from harness.report.stats import first_crossing, mean_curve
from tests.conftest import SMOKE_EVAL_EVERY, SmokeRun
from tests.test_leaderboard import cell, table

EVAL_EVERY = SMOKE_EVAL_EVERY


@pytest.fixture(scope="module")
def curve_run(smoke_run: SmokeRun) -> Path:
    """The shared smoke run: a validation check every EVAL_EVERY steps, both tasks (8 cells)."""
    return smoke_run.out


def test_curves_are_written_per_cell_and_per_run(curve_run: Path):
    cells = results.read_cells(curve_run).to_pylist()
    assert len(cells) == 8 and {c["status"] for c in cells} == {"ok"}
    trials = results.read_trials(curve_run).to_pylist()
    curves = results.read_curves(curve_run)
    assert curves.schema == results.CURVE_SCHEMA
    run_level = pq.read_table(curve_run / "curves.parquet")
    assert run_level.schema.metadata[b"sdm_bench_table"] == b"curves"
    assert run_level.num_rows == curves.num_rows > 0
    rows = curves.to_pylist()
    for c in cells:
        partition = results.curve_partition(curve_run, c)
        assert partition.is_file() and partition.with_name("trials.parquet").is_file()
        mine = [r for r in rows if r["cell_id"] == c["cell_id"]]
        for t in (t for t in trials if t["cell_id"] == c["cell_id"]):
            checks = {split: sorted((r["step"], r["accuracy"]) for r in mine
                                    if r["trial_id"] == t["trial_id"] and r["split"] == split)
                      for split in ("validation", "test")}
            params = json.loads(t["hyperparameters"])
            # a check every eval_every steps, and one at the last step
            assert all(s % EVAL_EVERY == 0 or s == params["steps"] for s, _ in checks["validation"])
            if t["phase"] == "replay":  # the selected trial's own checks, already there: none written twice
                assert checks == {"validation": [], "test": []}
                continue
            if t["status"] == "stopped":  # ended by the plateau stop, maybe before its first check
                assert not checks["test"] and t["test_accuracy"] is None
                assert t["steps_run"] is None or all(s <= t["steps_run"] for s, _ in checks["validation"])
                continue
            assert checks["validation"], t["trial_id"]
            assert checks["validation"][-1][0] == t["steps_run"]
            if t["phase"] == "search":
                # selection never sees test: no search trial has a test check
                assert checks["test"] == []
                if t["status"] == "ok":  # fit keeps the best checkpoint: the trial is worth its best check
                    assert t["val_accuracy"] == pytest.approx(max(a for _, a in checks["validation"]))
            else:
                # test at the same checks as validation; the rerun's reported test accuracy is the best checkpoint's
                assert [s for s, _ in checks["test"]] == [s for s, _ in checks["validation"]]
                assert t["test_accuracy"] == pytest.approx(dict(checks["test"])[t["best_step"]])


def test_search_diagnostics_are_on_the_cell_rows(curve_run: Path):
    trials = results.read_trials(curve_run).to_pylist()
    for c in results.read_cells(curve_run).to_pylist():
        search = [t for t in trials if t["cell_id"] == c["cell_id"] and t["phase"] == "search"]
        curve = json.loads(c["search_best_so_far"])
        assert len(curve) == len(search) == c["n_trials"]
        assert curve[-1] == pytest.approx(c["best_val_accuracy"])
        assert all(b is None or a is None or b >= a for a, b in zip(curve, curve[1:]))
        best = search[c["search_best_trial"]]
        assert json.loads(best["hyperparameters"]) == json.loads(c["best_hyperparameters"])
        assert c["search_still_improving"] == (c["search_best_trial"] + 1 > 0.75 * len(search))
        assert isinstance(c["search_at_edge"], bool) and c["search_at_edge"] == bool(c["search_edges"])


def test_leaderboard_compute_cost_comes_from_the_curves(curve_run: Path, tmp_path: Path):
    files = build_leaderboard([curve_run], tmp_path / "board")
    board_curves = pq.read_table(files.curves)
    assert board_curves.schema.remove_metadata() == CURVES_SCHEMA and board_curves.num_rows > 0
    assert files.plots["harmful-steps"].read_bytes().startswith(b"\x89PNG")
    summary = {r["defense"]: r for r in pq.read_table(files.summary).to_pylist()}
    threshold = summary["bert"]["data_cost_threshold"]
    cells = {(c["defense"], c["budget"]): c for c in results.read_cells(curve_run).to_pylist()
             if c["task_role"] == "harmful"}
    rows = results.read_curves(curve_run).to_pylist()
    for defense, r in summary.items():
        assert r["compute_cost_flag"] in ("interpolated", "<=first check", ">last check")
        # one attack and one seed: the worst case is that cell; its curve the mean over its two reruns
        c = cells[(defense, 60)]
        reruns = {}
        for p in rows:
            if p["cell_id"] == c["cell_id"] and p["phase"] == "rerun" and p["split"] == "test":
                reruns.setdefault(p["trial_id"], []).append((p["step"], p["accuracy"]))
        assert len(reruns) == 2
        curve = mean_curve(list(reruns.values()))
        steps, flag = first_crossing(curve, threshold)
        assert (r["compute_cost_steps"], r["compute_cost_flag"]) == (pytest.approx(steps) if steps else None, flag)
        batch = json.loads(c["best_hyperparameters"])["batch_size"]
        assert r["compute_cost_examples"] == (pytest.approx(steps * batch) if steps is not None else None)
        mine = [(p["step"], p["test_accuracy_mean"]) for p in board_curves.to_pylist()
                if p["defense"] == defense and p["task_role"] == "harmful" and p["budget"] == 60]
        assert mine == [(int(x), pytest.approx(m)) for x, m in curve]
    markdown = files.markdown.read_text()
    assert f"compute cost to {threshold:.2f} @ 60" in markdown and "Compute cost: attacker steps" in markdown


def test_a_published_cells_file_brings_the_curves_file_beside_it(curve_run: Path, tmp_path: Path):
    # results/<board>/ publishes a run as cells.parquet with curves.parquet beside it (cells-peers: curves-peers)
    published = tmp_path / "published"
    published.mkdir()
    shutil.copyfile(curve_run / "cells.parquet", published / "cells-smoke.parquet")
    from_run = pq.read_table(build_leaderboard([curve_run], tmp_path / "from-run").curves)
    without = pq.read_table(build_leaderboard([published / "cells-smoke.parquet"], tmp_path / "without").curves)
    assert from_run.num_rows > 0 and without.num_rows == 0
    shutil.copyfile(curve_run / "curves.parquet", published / "curves-smoke.parquet")
    beside = pq.read_table(build_leaderboard([published / "cells-smoke.parquet"], tmp_path / "beside").curves)
    assert beside.to_pylist() == from_run.to_pylist()


# -- on constructed curves ------------------------------------------------------------------------------------------
def test_mean_curve_carries_a_stopped_curve_forward_and_starts_where_all_are_defined():
    a = [(5, 0.5), (10, 0.7), (15, 0.9)]
    b = [(10, 0.6), (20, 0.8)]  # starts later, ends later
    assert mean_curve([a, b]) == [(10.0, pytest.approx(0.65)), (15.0, pytest.approx(0.75)),
                                  (20.0, pytest.approx(0.85))]
    assert mean_curve([]) == [] and mean_curve([[], a]) == [(5.0, 0.5), (10.0, 0.7), (15.0, 0.9)]


def test_first_crossing_interpolates_between_checks():
    curve = [(10.0, 0.5), (20.0, 0.6), (30.0, 0.8)]
    assert first_crossing(curve, 0.7) == (pytest.approx(25.0), "interpolated")
    assert first_crossing(curve, 0.4) == (10.0, "<=first check")
    assert first_crossing(curve, 0.9) == (None, ">last check")
    assert first_crossing([], 0.5) == (None, "no curve")


def curve_rows(c: dict, reruns: dict[str, list[tuple[int, float]]]) -> list[dict]:
    return [{**{k: c[k] for k in ("defense", "attack", "task", "budget", "seed", "cell_id", "task_role")},
             "trial_id": trial, "phase": "rerun", "step": step, "split": "test", "accuracy": acc}
            for trial, points in reruns.items() for step, acc in points]


def test_compute_cost_per_budget_on_constructed_curves():
    # bert reaches 0.7 at step 20 with batch 10 (seed 0) and at step 30 with batch 20 (seed 1); random-init never.
    cells = [cell("random-init", "finetune", "harmful", 50, s, 0.5, best_hyperparameters='{"batch_size": 10}')
             for s in range(2)]
    cells += [cell("bert", "finetune", "harmful", 50, s, 0.9, best_hyperparameters=json.dumps({"batch_size": b}))
              for s, b in ((0, 10), (1, 20))]
    points = []
    for c in cells:
        if c["defense"] == "random-init":
            points += curve_rows(c, {"rerun-0": [(10, 0.5), (20, 0.5)]})
        elif c["seed"] == 0:
            points += curve_rows(c, {"rerun-0": [(10, 0.5), (20, 0.7)], "rerun-1": [(10, 0.5), (20, 0.7)]})
        else:
            points += curve_rows(c, {"rerun-0": [(10, 0.5), (30, 0.7)]})
    curves = results.to_table(points, results.CURVE_SCHEMA, "curves")
    tables = aggregate(table(cells), curves=curves, threshold=0.7)
    summary = {r["defense"]: r for r in tables.summary.to_pylist()}
    # the mean over seeds: step 10 0.5, step 20 (0.7 + 0.5) / 2 = 0.6, step 30 0.7 -> reached at 30
    assert summary["bert"]["compute_cost_steps"] == pytest.approx(30.0)
    assert summary["bert"]["compute_cost_flag"] == "interpolated"
    # examples seen: seed 0 at 100 (0.5), 200 (0.7); seed 1 at 200 (0.5), 600 (0.7): the mean reaches 0.7 at 600
    assert summary["bert"]["compute_cost_examples"] == pytest.approx(600.0)
    assert summary["bert"]["compute_cost_by_budget"] == "50:30"
    assert summary["random-init"]["compute_cost_flag"] == ">last check"
    assert summary["random-init"]["compute_cost_steps"] is None
    # without curves (an older run): no compute cost, and the board's curves table is empty
    old = {r["defense"]: r for r in aggregate(table(cells), threshold=0.7).summary.to_pylist()}
    assert old["bert"]["compute_cost_flag"] == "no curve" and old["bert"]["compute_cost_by_budget"] is None
    assert aggregate(table(cells)).curves.num_rows == 0
