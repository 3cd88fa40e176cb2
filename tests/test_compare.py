"""`sdm compare`: a rerun's cells against published ones, on real cells files (a run folder and a cells Parquet file)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.compare import compare, load_cells
from harness.errors import UserError
from tests.conftest import sdm_command
from tests.test_leaderboard import T_975, cell, table, write_run

PUBLISHED = [0.50, 0.52, 0.54]  # mean 0.52, sd 0.02: 95% CI 0.52 ± 4.3027 * 0.02 / sqrt(3)
HALF_WIDTH = T_975[2] * 0.02 / 3**0.5


def run_cells(defended: list[float], floor: float = 0.5) -> list[dict]:
    return [
        *(cell("mlac", "probe", "harmful", 20, seed, acc) for seed, acc in enumerate(defended)),
        *(cell("random-init", "probe", "harmful", 20, seed, floor) for seed in range(len(defended))),
    ]


def group(result, defense: str, attack: str = "probe") -> dict:
    return next(g for g in result.groups if g["defense"] == defense and g["attack"] == attack)


def test_a_rerun_inside_the_published_interval_agrees_and_one_outside_does_not():
    published = table(run_cells(PUBLISHED))
    inside = compare(published, table(run_cells([0.50, 0.53, 0.56])))  # mean 0.53
    g = group(inside, "mlac")
    assert g["published_ci95"] == pytest.approx((0.52 - HALF_WIDTH, 0.52 + HALF_WIDTH))
    assert g["rerun_mean"] == pytest.approx(0.53) and g["difference"] == pytest.approx(0.01) and g["within"] is True
    outside = compare(published, table(run_cells([0.60, 0.62, 0.64])))  # mean 0.62, above 0.52 + 0.0497
    assert group(outside, "mlac")["within"] is False
    # The worst case over attacks is compared too; random-init's constant accuracy has a zero-width interval.
    assert group(outside, "mlac", "worst-case")["within"] is False
    assert group(outside, "random-init")["within"] is True
    assert inside.n_within == 4 and outside.n_within == 2
    gap = next(g for g in outside.gaps if g["defense"] == "mlac")
    assert gap["published_gap"] == pytest.approx(0.02) and gap["rerun_gap"] == pytest.approx(0.12)
    assert gap["within"] is False


def test_groups_only_one_side_has_are_listed_not_compared():
    published = table(run_cells(PUBLISHED) + [cell("sophon", "probe", "harmful", 20, 0, 0.6)])
    rerun = table(run_cells(PUBLISHED) + [cell("mlac", "probe", "harmful", 50, 0, 0.6)])
    result = compare(published, rerun)
    assert ("sophon", "probe", "gender", 20) in result.only_published
    assert ("mlac", "probe", "gender", 50) in result.only_rerun
    assert {g["defense"] for g in result.groups} == {"mlac", "random-init"}
    # One seed: no interval to be inside of.
    single = compare(table([cell("bert", "probe", "harmful", 20, 0, 0.6)]),
                     table([cell("bert", "probe", "harmful", 20, 0, 0.7)]))
    assert group(single, "bert")["within"] is None


def test_cli_compares_a_cells_file_with_a_run_folder(tmp_path: Path):
    published = write_run(tmp_path / "published", run_cells(PUBLISHED))
    rerun = write_run(tmp_path / "rerun", run_cells([0.60, 0.62, 0.64]))
    report = tmp_path / "compare.md"
    ok = subprocess.run([*sdm_command(), "compare", str(published / "cells.parquet"), str(rerun), "--out", str(report)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    text = report.read_text()
    assert "**2 of 4 groups**" in text
    assert "| mlac | probe | gender | 20 | 0.520 [0.470, 0.570] | 0.620 [0.570, 0.670] | +0.100 | **no** |" in text
    assert "| mlac | +0.020 [-0.030, +0.070] | inconclusive | +0.120 [+0.070, +0.170] | not blocked | **no** |" in text


def test_bad_sources_are_refused_with_one_line(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="expected a run directory or a cells .parquet file"):
        load_cells(tmp_path / "notes.txt")
    with pytest.raises(UserError, match="no finished cells"):
        load_cells(tmp_path)
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(UserError, match="not a cells table"):
        load_cells(tmp_path / "broken.parquet")
    bad = subprocess.run([*sdm_command(), "compare", str(tmp_path / "missing"), str(tmp_path)], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    nowhere = subprocess.run([*sdm_command(), "compare", str(tmp_path / "broken.parquet"), str(tmp_path), "--out",
                              str(tmp_path / "no" / "compare.md")], capture_output=True, text=True)
    assert nowhere.returncode == 2 and "--out" in nowhere.stderr and "folder does not exist" in nowhere.stderr
    assert not (tmp_path / "compare.md").exists() and not (tmp_path / "no").exists()


def test_verdicts_are_rederived_with_the_leaderboard_rules():
    published = table(run_cells(PUBLISHED))
    result = compare(published, table(run_cells([0.60, 0.62, 0.64])))
    [gap] = [g for g in result.gaps if g["defense"] == "mlac"]
    assert (gap["published_verdict"], gap["rerun_verdict"], gap["verdicts_agree"]) == ("inconclusive", "not blocked",
                                                                                       False)
    assert gap["rerun_worst"] == "+0.120 [+0.070, +0.170] @ 20"
    # two seeds are too few for a verdict on either side
    [two] = [g for g in compare(table(run_cells(PUBLISHED[:2])), table(run_cells(PUBLISHED[:2]))).gaps
             if g["defense"] == "mlac"]
    assert two["published_verdict"] == two["rerun_verdict"] == "too few seeds" and two["verdicts_agree"]


def test_a_cells_file_with_missing_or_newer_columns_is_read(tmp_path: Path):
    """Older files lack columns added later (null); columns present are read as they are."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cells = table(run_cells(PUBLISHED)).drop_columns(["n_reruns"])
    cells = cells.set_column(cells.schema.get_field_index("validation_rows"), "validation_rows",
                             pa.array([40] * cells.num_rows, pa.int64()))
    pq.write_table(cells, tmp_path / "cells.parquet")
    loaded = load_cells(tmp_path / "cells.parquet")
    assert set(loaded.column("n_reruns").to_pylist()) == {None}
    assert set(loaded.column("validation_rows").to_pylist()) == {40}
    assert compare(loaded, loaded).n_within == 4
