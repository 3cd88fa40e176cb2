"""Result tables: explicit pyarrow schemas, provenance on every row, atomic Parquet writes.

A run directory holds
  trials/defense=…/attack=…/task=…/budget=…/seed=…/trials.parquet   one row per search trial, rerun and replay
  cells/<cell_id>.parquet                                           one row per finished cell (the resume marker)
  cells.parquet                                                     all cell rows, rebuilt after every cell
  trials/defense=…/attack=…/task=…/budget=…/seed=…/curves.parquet   accuracy checks along each trial's steps
  curves.parquet                                                    all curve rows, rebuilt after every cell

Curves: every search trial's validation accuracy at each check (`search.eval_every`, and its last step); each rerun of
the selected configuration has its validation checks and, at the same steps, test accuracy (reruns only: selection
never sees test). The cells' search diagnostics (`search_*` columns) came later: cells written before them read null
there, which means unknown (no caution, no effect on a verdict), not "converged"; so do the `found_*` columns of cells
written before the replay existed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from harness.atomic import write_file_atomic

# Additive changes keep the version: trials' `node_id` came later and reads as null from files written before it.
SCHEMA_VERSION = 1
# What the numbers mean, as opposed to how they are stored. 2: disjoint data pools (the attacker's examples never come
# from the defenses' training split), bert trained exactly like the censoring defenses, defenses trained per seed,
# MLAC's learned inner lr on the attacker's objective. Cells without the column were measured under protocol 1.
PROTOCOL_VERSION = 2

PARTITION_FIELDS = [
    pa.field("defense", pa.string()),
    pa.field("attack", pa.string()),
    pa.field("task", pa.string()),
    pa.field("budget", pa.int64()),
    pa.field("seed", pa.int64()),
]

PROVENANCE_FIELDS = [
    pa.field("schema_version", pa.int32()),
    pa.field("experiment", pa.string()),
    pa.field("config_hash", pa.string()),
    pa.field("package_version", pa.string()),
    pa.field("git_commit", pa.string()),
    pa.field("model_id", pa.string()),
    pa.field("model_fingerprint", pa.string()),
    pa.field("defense_fingerprint", pa.string()),
    pa.field("data_id", pa.string()),
    pa.field("data_fingerprint", pa.string()),
    pa.field("ray_version", pa.string()),
    pa.field("torch_version", pa.string()),
    pa.field("hardware", pa.string()),
    pa.field("protocol_version", pa.int32()),  # PROTOCOL_VERSION; null in cells written before it existed
    pa.field("precision", pa.string()),  # resolved: bf16 | fp32; null in rows written before it existed (fp32)
]

# Where a cell's numbers came from: the defended weights it attacked and the data pools it drew on (null in older files).
ORIGIN_FIELDS = [
    pa.field("defense_seed", pa.int64()),  # the seed the attacked defense was trained with
    pa.field("defense_seeding", pa.string()),  # per-seed | shared (one trained model serves every cell seed)
    pa.field("defense_variant", pa.string()),  # e.g. first-order: shown beside the defense's name in reports
    pa.field("budget_pool", pa.string()),  # the pool the budget sample was drawn from
    pa.field("validation_pool", pa.string()),  # the pool selection and early stopping saw
    pa.field("test_pool", pa.string()),  # the pool test accuracy is read on
    pa.field("validation_rows", pa.int64()),  # labelled rows the attacker selected on, beside its budget
]

# Did the attacker's search converge? Computed by the search (`harness.search.search_diagnostics`); null in cells
# written before them (unknown) and in cells with no successful search trial.
SEARCH_DIAGNOSTIC_FIELDS = [
    # JSON list, one entry per search trial in Tune's order (creation, a retried trial moved to the end; the trials
    # table's order): the best validation accuracy of the successful trials so far (null before the first)
    pa.field("search_best_so_far", pa.string()),
    pa.field("search_best_trial", pa.int64()),  # 0-based index in that order of the trial selected
    pa.field("search_still_improving", pa.bool_()),  # the selected trial came in the last quarter of the trials
    pa.field("search_at_edge", pa.bool_()),  # a searched numeric dimension of the selection within 10% of a bound
    pa.field("search_edges", pa.string()),  # those dimensions as "name:low|high", joined by ","; "" when none
]

TRIAL_SCHEMA = pa.schema(
    [
        *PARTITION_FIELDS,
        pa.field("cell_id", pa.string()),
        pa.field("task_role", pa.string()),  # harmful | desired
        pa.field("phase", pa.string()),  # search | rerun | replay
        pa.field("trial_id", pa.string()),
        pa.field("trial_seed", pa.int64()),
        pa.field("hyperparameters", pa.string()),  # JSON object
        pa.field("val_accuracy", pa.float64()),
        pa.field("test_accuracy", pa.float64()),  # null for search trials: selection never sees test
        pa.field("steps_run", pa.int64()),
        pa.field("best_step", pa.int64()),
        pa.field("status", pa.string()),  # ok | error | stopped (cut short by ASHA or the plateau stop)
        pa.field("error", pa.string()),
        pa.field("wall_seconds", pa.float64()),
        pa.field("node_id", pa.string()),  # the Ray node whose worker trained it
        *ORIGIN_FIELDS,
        *PROVENANCE_FIELDS,
    ]
)

CELL_SCHEMA = pa.schema(
    [
        *PARTITION_FIELDS,
        pa.field("cell_id", pa.string()),
        pa.field("task_role", pa.string()),
        pa.field("status", pa.string()),  # ok | failed
        pa.field("selection", pa.string()),  # heldout | reference
        pa.field("n_trials", pa.int64()),
        pa.field("n_failed", pa.int64()),
        pa.field("best_hyperparameters", pa.string()),
        pa.field("best_val_accuracy", pa.float64()),
        pa.field("test_accuracy", pa.float64()),  # mean over reruns of the selected configuration
        pa.field("test_accuracy_std", pa.float64()),
        pa.field("n_reruns", pa.int64()),
        # The selected trial replayed with its own seed: the model the attacker found. Validation equal to
        # best_val_accuracy when the replay reproduced the trial; test read for reporting, as the reruns' is.
        pa.field("found_val_accuracy", pa.float64()),
        pa.field("found_test_accuracy", pa.float64()),
        pa.field("wall_seconds", pa.float64()),
        *SEARCH_DIAGNOSTIC_FIELDS,
        *ORIGIN_FIELDS,
        *PROVENANCE_FIELDS,
    ]
)

CURVE_SCHEMA = pa.schema(
    [
        *PARTITION_FIELDS,
        pa.field("cell_id", pa.string()),
        pa.field("task_role", pa.string()),
        pa.field("trial_id", pa.string()),  # as in the trials table
        pa.field("phase", pa.string()),  # search | rerun
        pa.field("step", pa.int64()),  # training steps done at the check
        pa.field("split", pa.string()),  # validation | test (test: reruns only)
        pa.field("accuracy", pa.float64()),  # of the model at that step (not of the best checkpoint so far)
    ]
)


# -- typed rows: each table's rows are built from these records, never as loose dicts ---------------------------------
@dataclass(frozen=True)
class CellKey:
    """Which cell a row belongs to."""

    defense: str
    attack: str
    task: str
    budget: int
    seed: int
    cell_id: str
    task_role: str  # harmful | desired


@dataclass(frozen=True)
class CellOrigin:
    """ORIGIN_FIELDS: the defended weights a cell attacked and the pools it drew on."""

    defense_seed: int
    defense_seeding: str
    defense_variant: str | None
    budget_pool: str
    validation_pool: str
    test_pool: str
    validation_rows: int


@dataclass(frozen=True)
class Provenance:
    """PROVENANCE_FIELDS: what produced a row (code, libraries, model, data, machine)."""

    experiment: str
    config_hash: str
    package_version: str
    git_commit: str
    model_id: str
    model_fingerprint: str
    defense_fingerprint: str | None
    data_id: str
    data_fingerprint: str
    ray_version: str
    torch_version: str
    hardware: str
    precision: str  # the resolved precision of the run's forward passes: bf16 (autocast) or fp32
    schema_version: int = SCHEMA_VERSION
    protocol_version: int = PROTOCOL_VERSION

    def ran_on(self, machines: list[RanOn]) -> Provenance:
        """This provenance with the hardware and precision that `machines` (the trials of a row) really ran on,
        each value once, in order, joined by ", "; as it is when there are none (no trial got that far)."""
        if not machines:
            return self
        return dataclasses.replace(self, hardware=", ".join(dict.fromkeys(m.hardware for m in machines)),
                                   precision=", ".join(dict.fromkeys(m.precision for m in machines)))


@dataclass(frozen=True)
class RanOn:
    """What a trial's worker computed on: the device (`harness.device.hardware`) and the resolved precision."""

    hardware: str
    precision: str


@dataclass(frozen=True)
class TrialResult:
    """One search trial or rerun, as the search reports it."""

    phase: str  # search | rerun | replay
    trial_id: str
    trial_seed: int
    hyperparameters: str  # JSON object
    val_accuracy: float | None
    test_accuracy: float | None  # None for search trials: selection never sees test
    steps_run: int | None
    best_step: int | None
    status: str  # ok | error | stopped
    error: str | None
    wall_seconds: float | None
    node_id: str | None


@dataclass(frozen=True)
class CellResult:
    """One cell's outcome, as the search reports it: the selected configuration and its reruns' test accuracy."""

    status: str  # ok | failed
    selection: str
    n_trials: int
    n_failed: int
    n_reruns: int
    wall_seconds: float
    best_hyperparameters: str | None = None
    best_val_accuracy: float | None = None
    test_accuracy: float | None = None
    test_accuracy_std: float | None = None
    found_val_accuracy: float | None = None  # the selected trial's replay (CELL_SCHEMA)
    found_test_accuracy: float | None = None
    search_best_so_far: str | None = None  # SEARCH_DIAGNOSTIC_FIELDS
    search_best_trial: int | None = None
    search_still_improving: bool | None = None
    search_at_edge: bool | None = None
    search_edges: str | None = None


@dataclass(frozen=True)
class CurvePoint:
    """One accuracy check of one trial or rerun, as the search reports it."""

    trial_id: str
    phase: str  # search | rerun
    step: int
    split: str  # validation | test
    accuracy: float


@dataclass(frozen=True)
class CurveRow:
    key: CellKey
    point: CurvePoint


@dataclass(frozen=True)
class TrialRow:
    key: CellKey
    result: TrialResult
    origin: CellOrigin
    provenance: Provenance


@dataclass(frozen=True)
class CellRow:
    key: CellKey
    result: CellResult
    origin: CellOrigin
    provenance: Provenance


def flatten(record: Any) -> dict[str, Any]:
    """A (nested) record's fields as one flat mapping; a dict passes through."""
    if isinstance(record, dict):
        return record
    out: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flatten(value))
        else:
            out[f.name] = value
    return out


def _metadata(kind: str) -> dict[bytes, bytes]:
    return {b"sdm_bench_schema_version": str(SCHEMA_VERSION).encode(), b"sdm_bench_table": kind.encode()}


def to_table(rows: list[Any], schema: pa.Schema, kind: str) -> pa.Table:
    """Rows (typed records or dicts) as a table of `schema`; a field the schema lacks, or one a row lacks, raises
    instead of becoming a silent null column."""
    flat = [flatten(row) for row in rows]
    names = set(schema.names)
    for row in flat:
        if set(row) != names:
            unknown, missing = sorted(set(row) - names), sorted(names - set(row))
            raise ValueError(f"{kind} row does not fit its schema: unknown fields {unknown}, missing fields {missing}")
    columns = {f.name: [row[f.name] for row in flat] for f in schema}
    return pa.Table.from_pydict(columns, schema=schema).replace_schema_metadata(_metadata(kind))


def write_table(path: Path, table: pa.Table) -> Path:
    return write_file_atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def trial_partition(run_dir: Path, row: dict[str, Any]) -> Path:
    parts = [f"{f.name}={row[f.name]}" for f in PARTITION_FIELDS]
    return Path(run_dir, "trials", *parts, "trials.parquet")


def curve_partition(run_dir: Path, row: dict[str, Any]) -> Path:
    return trial_partition(run_dir, row).with_name("curves.parquet")


def _unpartitioned(rows: list[Any], schema: pa.Schema, kind: str) -> pa.Table:
    """Rows without the partition columns, which the partition path holds."""
    partition = {p.name for p in PARTITION_FIELDS}
    keep = pa.schema([f for f in schema if f.name not in partition])
    return to_table([{k: v for k, v in flatten(row).items() if k not in partition} for row in rows], keep, kind)


def write_cell(run_dir: Path, trial_rows: list[TrialRow], cell_row: CellRow,
               curve_rows: list[CurveRow] | None = None) -> None:
    """A finished cell: its trials and curves first, then its cell row (whose presence marks the cell as done)."""
    cell = flatten(cell_row)
    write_table(trial_partition(run_dir, cell), _unpartitioned(trial_rows, TRIAL_SCHEMA, "trials"))
    write_table(curve_partition(run_dir, cell), _unpartitioned(curve_rows or [], CURVE_SCHEMA, "curves"))
    write_table(Path(run_dir, "cells", f"{cell['cell_id']}.parquet"), to_table([cell], CELL_SCHEMA, "cell"))


def _read_partitioned(run_dir: Path, filename: str, schema: pa.Schema) -> pa.Table:
    """The `filename` files of every cell partition under trials/ (a cell's trials and curves share its folder)."""
    folder = Path(run_dir, "trials")
    files = sorted(folder.rglob(filename)) if folder.exists() else []
    if not files:
        return schema.empty_table()
    partitioning = ds.partitioning(pa.schema(PARTITION_FIELDS), flavor="hive")
    # The explicit schema reads columns an older file lacks as nulls.
    dataset = ds.dataset([str(f) for f in files], schema=schema, format="parquet", partitioning=partitioning,
                         partition_base_dir=str(folder), exclude_invalid_files=True)
    return dataset.to_table()


def read_trials(run_dir: Path) -> pa.Table:
    return _read_partitioned(run_dir, "trials.parquet", TRIAL_SCHEMA)


def read_curves(run_dir: Path) -> pa.Table:
    """Every cell's curve rows (empty for a run written before curves existed)."""
    return _read_partitioned(run_dir, "curves.parquet", CURVE_SCHEMA)


def write_curves_table(run_dir: Path) -> Path:
    table = read_curves(run_dir).replace_schema_metadata(_metadata("curves"))
    return write_table(Path(run_dir, "curves.parquet"), table)


def read_cells(run_dir: Path) -> pa.Table:
    folder = Path(run_dir, "cells")
    files = sorted(folder.glob("*.parquet")) if folder.exists() else []
    if not files:
        return CELL_SCHEMA.empty_table()
    return pa.concat_tables([conform(pq.read_table(f), CELL_SCHEMA) for f in files])


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with `schema`'s columns in its order; columns an older file lacks read as nulls."""
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def write_cells_table(run_dir: Path) -> Path:
    table = read_cells(run_dir).replace_schema_metadata(_metadata("cells"))
    return write_table(Path(run_dir, "cells.parquet"), table)


def write_run_tables(run_dir: Path) -> dict[str, Path]:
    """A finished run's tables: the trials folder, and cells.parquet and curves.parquet rebuilt from the cells' own
    files (which stay the record: the run-level files are conveniences, rebuilt whole)."""
    return {"trials": Path(run_dir, "trials"), "cells": write_cells_table(run_dir),
            "curves": write_curves_table(run_dir)}

