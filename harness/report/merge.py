"""Merging runs into one cells table (and their curves), and the cautions a merged board owes its reader.

Runs merge by defense name (or label); what they measured must agree (data, selection, tasks, schema), and each cell
may come from one run only. What a merge cannot refuse but a reader must know (two trained weights under one name,
defense weights shared across seeds, attack searches that had not converged) becomes a caution shown on the board.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from harness.errors import UserError
from harness.report.tables import ROLES
from harness.results import CELL_SCHEMA, CURVE_SCHEMA, SCHEMA_VERSION, conform, read_cells, read_curves

SHARED_SEEDING = "shared"
REPRODUCED_TOLERANCE = 1e-9  # a replay reproduces its trial when their validation accuracies agree this closely


def shared_seeding_cautions(rows: list[dict]) -> tuple[str, ...]:
    """A defense trained once and attacked with every seed: its intervals cover data draws and searches only."""
    shared = sorted({r["defense"] for r in rows if r.get("defense_seeding") == SHARED_SEEDING})
    if not shared:
        return ()
    return (f"defense weights shared across seeds ({', '.join(shared)}): intervals leave out training variance",)


def mixed_weights_cautions(rows: list[dict]) -> tuple[str, ...]:
    """One caution per defense whose cells of one training seed were measured on more than one set of trained weights.

    Runs merge by defense name (or label), so two runs that trained a defense differently, or retrained it (training
    is not bit-reproducible across processes), put cells of different models in one row. Not an error: a retrain of
    the same config is a fair merge, but the reader must be told, and a different config must be labelled apart.
    Per-seed defenses are different weights by design: only weights of the same training seed are compared (cells
    without a recorded training seed were measured on one shared model, seed 0's).
    """
    weights: dict[tuple[str, int | None], dict[str, set[str]]] = {}  # (defense, seed) -> fingerprint -> experiments
    for r in rows:
        seed = r.get("defense_seed")
        key = (r["defense"], None if seed is None else int(seed))
        weights.setdefault(key, {}).setdefault(str(r["defense_fingerprint"]), set()).add(str(r["experiment"]))
    return tuple(
        f"defense '{defense}'" + ("" if seed is None else f" (trained with seed {seed})")
        + f" merges cells measured on {len(by_fp)} different trained weights ("
        + "; ".join(f"fingerprint {fp} in {', '.join(sorted(exps))}" for fp, exps in sorted(by_fp.items()))
        + "): a retrain of the same config, or different configs under one name (give each its own label)"
        for (defense, seed), by_fp in weights.items()
        if len(by_fp) > 1
    )


def cell_flag(cell: dict[str, Any], column: str) -> bool | None:
    value = cell.get(column)
    return None if value is None else bool(value)


def search_counts(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """A group's `n_still_improving`, `n_at_edge` and `search_edges`, over the cells that have the diagnostics."""
    known = [c for c in cells if cell_flag(c, "search_still_improving") is not None]
    if not known:
        return {"n_still_improving": None, "n_at_edge": None, "search_edges": None}
    edges = sorted({e for c in known for e in (c.get("search_edges") or "").split(",") if e})
    return {"n_still_improving": sum(bool(cell_flag(c, "search_still_improving")) for c in known),
            "n_at_edge": sum(bool(cell_flag(c, "search_at_edge")) for c in known), "search_edges": ",".join(edges)}


def found_beyond_reruns(cell: dict[str, Any], margin: float) -> bool | None:
    """Did the cell's found model (its selected trial, replayed with its own seed) score more than `margin` above its
    reruns' mean on test? Then the cell's test accuracy understates what the attacker holds: its configuration broke
    the defense on its own seed and not on the fresh ones. None: no replay (cells written before it existed)."""
    found, reruns = cell.get("found_test_accuracy"), cell.get("test_accuracy")
    return None if found is None or reruns is None else found - reruns > margin


def limited_cells(cells: list[dict[str, Any]], margin: float) -> list[dict[str, Any]]:
    """The cells whose search was still improving or selected a configuration at an edge of the space, or whose
    found model beat its reruns by more than `margin`: the attacker wanted more search, or more reruns."""
    return [c for c in cells if cell_flag(c, "search_still_improving") or cell_flag(c, "search_at_edge")
            or found_beyond_reruns(c, margin)]


def _where(chosen: list[dict[str, Any]], detail: Callable[[dict[str, Any]], Any] | None = None) -> str:
    """Cells by attack and budget with their seeds: "finetune@200 (seeds 0; 2), probe@20 (seed 1: lr:high)"."""
    parts: dict[tuple, list[str]] = {}
    for c in sorted(chosen, key=lambda c: (c["attack"], c["budget"], c["seed"])):
        parts.setdefault((c["attack"], c["budget"]), []).append(str(c["seed"]) + (f": {detail(c)}" if detail else ""))
    return ", ".join(f"{a}@{b} (seed{'s' if len(v) > 1 else ''} {'; '.join(v)})" for (a, b), v in parts.items())


def _versus(first: str, second: str) -> Callable[[dict[str, Any]], str]:
    return lambda c: f"{c[first]:.3f} vs {c[second]:.3f}"


def search_caution_text(cells: list[dict[str, Any]], margin: float) -> str | None:
    """What was budget-limited among a defense's harmful cells (`limited_cells`), by attack and budget with their
    seeds: "still improving: finetune@200 (seeds 0; 2); at an edge of the space: finetune@20 (seed 1: lr:high)";
    None when nothing."""
    late = [c for c in cells if cell_flag(c, "search_still_improving")]
    edge = [c for c in cells if cell_flag(c, "search_at_edge")]
    found = [c for c in cells if found_beyond_reruns(c, margin)]
    texts = ([f"still improving: {_where(late)}"] if late else []) + (
        [f"at an edge of the space: {_where(edge, lambda c: c.get('search_edges'))}"] if edge else []) + (
        [f"found model above its reruns on test: {_where(found, _versus('found_test_accuracy', 'test_accuracy'))}"]
        if found else [])
    return "; ".join(texts) or None


def unreproduced_text(cells: list[dict[str, Any]]) -> str | None:
    """The cells whose replay did not reproduce the selected trial's validation accuracy (training was not
    deterministic there, so the found model is a sibling of the selected one), as "finetune@50 (seed 3: 0.700 vs
    0.710)"; None when every replay reproduced its trial, or no cell has one."""
    off = [c for c in cells if c.get("found_val_accuracy") is not None and c.get("best_val_accuracy") is not None
           and abs(c["found_val_accuracy"] - c["best_val_accuracy"]) > REPRODUCED_TOLERANCE]
    return _where(off, _versus("found_val_accuracy", "best_val_accuracy")) if off else None


# -- merging runs -------------------------------------------------------------------------------------------------
def _run_facts(run: Path, cells: pa.Table) -> dict[str, str]:
    """What must agree between merged runs: one value per run for each."""
    facts: dict[str, str] = {}
    for column in ("schema_version", "data_fingerprint", "selection"):
        values = sorted({str(v) for v in cells.column(column).to_pylist()})
        if len(values) > 1:
            raise UserError(f"run '{run}': its cells disagree on {column} ({', '.join(values)})")
        facts[column] = values[0]
    for role in ROLES:
        tasks = sorted({t for t, r in zip(cells.column("task").to_pylist(), cells.column("task_role").to_pylist())
                        if r == role})
        if len(tasks) > 1:
            raise UserError(f"run '{run}': its cells name several {role} tasks ({', '.join(tasks)})")
        if tasks:  # a run that attacked only one role says nothing about the other
            facts[f"{role} task"] = tasks[0]
    return facts


def merge_runs(run_dirs: list[Path]) -> tuple[pa.Table, tuple[str, ...]]:
    """The cells of all runs as one table; refuses runs that measured different things. A run is a run directory
    or a published cells .parquet file (results/reproduce/cells.parquet)."""
    if not run_dirs:
        raise UserError("no run directory given")
    seen: dict[str, tuple[str, Path]] = {}  # fact -> (value, first run that had it)
    owners: dict[tuple, Path] = {}  # cell key -> run
    tables = []
    for run in map(Path, run_dirs):
        published = run.is_file() and run.suffix == ".parquet"  # a cells table as results/ publishes it
        if not run.is_dir() and not published:
            raise UserError(f"run '{run}': not a directory (nor a cells .parquet file)")
        try:
            cells = conform(pq.read_table(run), CELL_SCHEMA) if published else read_cells(run)
        except (pa.ArrowException, KeyError, ValueError, OSError) as exc:
            raise UserError(f"run '{run}': cells table unreadable with schema version {SCHEMA_VERSION} ({exc})") from None
        if cells.num_rows == 0:
            raise UserError(f"run '{run}': no finished cells under {run / 'cells'}")
        for fact, value in _run_facts(run, cells).items():
            if fact in seen and seen[fact][0] != value:
                first_value, first_run = seen[fact]
                raise UserError(f"cannot merge runs '{first_run}' and '{run}': {fact} differs ({first_value} vs {value})")
            seen.setdefault(fact, (value, run))
        for row in cells.select(["defense", "attack", "task", "budget", "seed", "cell_id"]).to_pylist():
            key = (row["defense"], row["attack"], row["task"], row["budget"], row["seed"])
            if key in owners:
                raise UserError(f"cannot merge runs '{owners[key]}' and '{run}': both hold cell {row['cell_id']}")
            owners[key] = run
        tables.append(cells)
    return pa.concat_tables(tables), tuple(run_name(Path(r)) for r in run_dirs)


def run_name(run: Path) -> str:
    """How the board names a run: its folder's name, or a published cells file's folder and name."""
    run = run.resolve()
    return f"{run.parent.name}/{run.name}" if run.is_file() else run.name


def published_curves(cells_file: Path) -> Path:
    """Where a published cells file's board curves lie: beside it, named alike (cells-peers.parquet:
    curves-peers.parquet)."""
    return cells_file.with_name(cells_file.name.replace("cells", "curves", 1))


def published_trial_curves(cells_file: Path) -> Path:
    """Where a published cells file's per-trial curves lie, the run's own curves.parquet: beside it, named alike
    (cells.parquet: trial-curves.parquet), so that a board merging the cells file can draw them."""
    return cells_file.with_name(cells_file.name.replace("cells", "trial-curves", 1))


def _curves_file(path: Path) -> pa.Table | None:
    """A run's curves.parquet as CURVE_SCHEMA rows; None when it holds a board's aggregated curves instead (a
    published folder's `curves.parquet` is its board's: means over seeds, no `cell_id` to merge by)."""
    table = pq.read_table(path)
    return conform(table, CURVE_SCHEMA) if "cell_id" in table.column_names else None


def merge_curves(run_dirs: list[Path], cells: pa.Table) -> tuple[pa.Table, tuple[str, ...]]:
    """The curves of all runs (CURVE_SCHEMA) for the merged cells: a run's per-cell curve files, or its run-level
    curves.parquet when it has only that, or for a published cells file the per-trial curves beside it (else its
    board's curves file, which cannot be merged); empty for runs written before curves existed. Also the cautions
    for runs whose curves file holds a board's aggregate."""
    import pyarrow.compute as pc

    tables, cautions = [], []
    for run in map(Path, run_dirs):
        curves = read_curves(run) if run.is_dir() else CURVE_SCHEMA.empty_table()
        if run.is_dir():
            beside = run / "curves.parquet"
        else:  # a published cells file: its run's per-trial curves where published with it, else its board's
            trial_curves = published_trial_curves(run)
            beside = trial_curves if trial_curves.is_file() else published_curves(run)
        if curves.num_rows == 0 and beside.is_file():
            per_trial = _curves_file(beside)
            if per_trial is None:
                cautions.append(f"run '{run_name(run)}' brings its board's aggregated curves ({beside.name}), not "
                                "per-trial ones: compute cost and the harmful-steps plot leave its cells out")
            else:
                curves = per_trial
        tables.append(curves)
    merged = pa.concat_tables(tables) if tables else CURVE_SCHEMA.empty_table()
    if merged.num_rows:  # only the curves of cells the board holds (not a cell failed since, nor another run's)
        merged = merged.filter(pc.is_in(merged["cell_id"], value_set=cells["cell_id"]))
    return merged, tuple(cautions)
