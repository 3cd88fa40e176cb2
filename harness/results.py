"""Result tables: explicit pyarrow schemas, provenance on every row, atomic Parquet writes.

A run directory holds
  trials/defense=…/attack=…/task=…/budget=…/seed=…/trials.parquet   one row per search trial and per rerun
  cells/<cell_id>.parquet                                           one row per finished cell (the resume marker)
  cells.parquet                                                     all cell rows, rebuilt after every cell
"""

from __future__ import annotations

import platform
import subprocess
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

TRIAL_SCHEMA = pa.schema(
    [
        *PARTITION_FIELDS,
        pa.field("cell_id", pa.string()),
        pa.field("task_role", pa.string()),  # harmful | desired
        pa.field("phase", pa.string()),  # search | rerun
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
        pa.field("wall_seconds", pa.float64()),
        *ORIGIN_FIELDS,
        *PROVENANCE_FIELDS,
    ]
)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def hardware() -> str:
    import os

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"cpu {platform.machine()} x{os.cpu_count()}"


def provenance(**fields: Any) -> dict[str, Any]:
    """The run-wide provenance columns; callers pass the experiment-specific ones."""
    import ray
    import torch

    from harness import __version__

    base = {
        "schema_version": SCHEMA_VERSION,
        "package_version": __version__,
        "git_commit": git_commit(),
        "ray_version": ray.__version__,
        "torch_version": torch.__version__,
        "hardware": hardware(),
        "protocol_version": PROTOCOL_VERSION,
    }
    base.update(fields)
    missing = [f.name for f in PROVENANCE_FIELDS if f.name not in base]
    if missing:
        raise ValueError(f"provenance lacks {missing}")
    return base


def _metadata(kind: str) -> dict[bytes, bytes]:
    return {b"sdm_bench_schema_version": str(SCHEMA_VERSION).encode(), b"sdm_bench_table": kind.encode()}


def to_table(rows: list[dict[str, Any]], schema: pa.Schema, kind: str) -> pa.Table:
    columns = {f.name: [row.get(f.name) for row in rows] for f in schema}
    return pa.Table.from_pydict(columns, schema=schema).replace_schema_metadata(_metadata(kind))


def write_table(path: Path, table: pa.Table) -> Path:
    return write_file_atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def trial_partition(run_dir: Path, row: dict[str, Any]) -> Path:
    parts = [f"{f.name}={row[f.name]}" for f in PARTITION_FIELDS]
    return Path(run_dir, "trials", *parts, "trials.parquet")


def write_cell(run_dir: Path, trial_rows: list[dict[str, Any]], cell_row: dict[str, Any]) -> None:
    """A finished cell: its trials first, then its cell row (whose presence marks the cell as done)."""
    keep = [f for f in TRIAL_SCHEMA if f.name not in {p.name for p in PARTITION_FIELDS}]
    table = to_table(trial_rows, pa.schema(keep), "trials")
    write_table(trial_partition(run_dir, cell_row), table)
    write_table(Path(run_dir, "cells", f"{cell_row['cell_id']}.parquet"), to_table([cell_row], CELL_SCHEMA, "cell"))


def finished_cells(run_dir: Path) -> set[str]:
    folder = Path(run_dir, "cells")
    return {p.stem for p in folder.glob("*.parquet")} if folder.exists() else set()


def read_trials(run_dir: Path) -> pa.Table:
    folder = Path(run_dir, "trials")
    if not folder.exists():
        return TRIAL_SCHEMA.empty_table()
    partitioning = ds.partitioning(pa.schema(PARTITION_FIELDS), flavor="hive")
    # The explicit schema reads columns an older file lacks as nulls.
    dataset = ds.dataset(folder, schema=TRIAL_SCHEMA, format="parquet", partitioning=partitioning,
                         exclude_invalid_files=True)
    return dataset.to_table()


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

