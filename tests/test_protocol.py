"""Protocol guarantees that live in the runner: per-seed defenses, the pools and seeding recorded on every row, and
config warnings for settings that weaken a search."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.configfile import load_config
from harness.results import CELL_SCHEMA, PROTOCOL_VERSION, read_cells, read_trials
from tests.conftest import SMOKE, sdm_command


def test_defenses_are_trained_per_seed_by_default() -> None:
    cfg = load_config(SMOKE, ["seeds=[0, 3]"])
    assert cfg.defense_training.seeding == "per-seed"
    assert [cfg.defense_training.seed_for(s) for s in cfg.seeds] == [0, 3]
    shared = load_config(SMOKE, ["seeds=[0, 3]", "defense_training.seeding=shared"])
    assert [shared.defense_training.seed_for(s) for s in shared.seeds] == [0, 0]
    assert any("shared" in w for w in shared.warnings())


def test_wide_concurrency_against_few_trials_is_warned() -> None:
    assert load_config(SMOKE).warnings() == []
    wide = load_config(SMOKE, ["search.num_samples=50", "search.max_concurrent=32"])
    (warning,) = wide.warnings()
    assert "search.max_concurrent 32" in warning and "random search" in warning
    assert load_config(SMOKE, ["search.num_samples=50", "search.max_concurrent=4"]).warnings() == []


def test_older_cells_files_read_with_null_new_columns(tmp_path: Path) -> None:
    """Cells written before a column existed still read, the column null (published results keep loading)."""
    old = pa.schema([f for f in CELL_SCHEMA if f.name not in {"defense_seed", "protocol_version", "budget_pool"}])
    folder = tmp_path / "cells"
    folder.mkdir()
    row = {f.name: None for f in old}
    row.update(defense="bert", attack="probe", task="gender", budget=20, seed=0, cell_id="c", status="ok")
    pq.write_table(pa.Table.from_pylist([row], schema=old), folder / "c.parquet")
    cells = read_cells(tmp_path)
    assert cells.schema.names == CELL_SCHEMA.names
    assert cells.column("defense_seed").to_pylist() == [None] and cells.column("defense").to_pylist() == ["bert"]


@pytest.fixture(scope="module")
def two_seed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("per-seed")
    out = work / "run"
    result = subprocess.run(
        [*sdm_command(), "run", str(SMOKE), "--out", str(out), "--set", "seeds=[0, 1]", "--set", "budgets=[30]",
         "--set", "tasks.attacked=[harmful]", "--set", "search.num_samples=2", "--set", "search.reruns=1"],
        cwd=work, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_each_seed_attacks_a_defense_trained_with_that_seed(two_seed_run: Path) -> None:
    cells = read_cells(two_seed_run).to_pylist()
    assert len(cells) == 4 and all(c["status"] == "ok" for c in cells)
    for cell in cells:
        assert cell["defense_seed"] == cell["seed"] and cell["defense_seeding"] == "per-seed"
        assert cell["protocol_version"] == PROTOCOL_VERSION
    for defense in ("random-init", "bert"):
        prints = {c["seed"]: c["defense_fingerprint"] for c in cells if c["defense"] == defense}
        assert prints[0] != prints[1], f"{defense}: both seeds attacked the same trained weights"


@pytest.mark.slow
def test_rows_record_the_pools_they_came_from(two_seed_run: Path) -> None:
    cells = read_cells(two_seed_run).to_pylist()
    trials = read_trials(two_seed_run).to_pylist()
    for row in [*cells, *trials]:
        assert row["budget_pool"] and row["validation_pool"] and row["test_pool"]
        assert len({row["budget_pool"], row["validation_pool"], row["test_pool"]}) == 3
        assert row["validation_rows"] == 120  # smoke's validation_size


def test_weights_cached_by_an_older_training_are_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLAC's learned inner lr changed optimizer: its cache key changes with it, other keys stay as they were."""
    from defenses.mlac import Mlac
    from harness.config import DefenseSpec
    from harness.defend import defense_key

    cfg = load_config(SMOKE)
    learned = DefenseSpec(name="mlac", params={"inner_lr": "learned", "inner_steps": 1})
    sampled = DefenseSpec(name="mlac", params={"inner_lr": "sampled", "inner_steps": 1})
    now = {spec.params["inner_lr"]: defense_key(cfg, spec, "data", 0) for spec in (learned, sampled)}
    monkeypatch.setattr(Mlac, "training_revision", lambda self: 0)
    before = {spec.params["inner_lr"]: defense_key(cfg, spec, "data", 0) for spec in (learned, sampled)}
    assert now["learned"] != before["learned"] and now["sampled"] == before["sampled"]
