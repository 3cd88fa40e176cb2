"""Typed rows: each table's rows come from records whose fields are exactly the table's columns, and a row with a
field too many or too few is refused instead of becoming a silent null column."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from harness import results
from tests.conftest import ROOT, SMOKE


def field_names(record_type: type) -> list[str]:
    names = []
    for f in dataclasses.fields(record_type):
        inner = record_type.__annotations__[f.name]
        inner_type = getattr(results, inner) if isinstance(inner, str) and hasattr(results, inner) else None
        names += field_names(inner_type) if dataclasses.is_dataclass(inner_type) else [f.name]
    return names


@pytest.mark.parametrize("record, schema", [(results.TrialRow, results.TRIAL_SCHEMA),
                                            (results.CellRow, results.CELL_SCHEMA)])
def test_row_records_have_exactly_the_tables_columns(record: type, schema) -> None:
    names = field_names(record)
    assert len(names) == len(set(names)) and set(names) == set(schema.names)


def test_a_row_with_an_unknown_or_missing_field_is_refused() -> None:
    row = dict.fromkeys(results.CELL_SCHEMA.names)
    assert results.to_table([row], results.CELL_SCHEMA, "cells").num_rows == 1
    with pytest.raises(ValueError, match=r"unknown fields \['tset_accuracy'\]"):
        results.to_table([{**row, "tset_accuracy": 0.5}], results.CELL_SCHEMA, "cells")
    del row["test_accuracy"]
    with pytest.raises(ValueError, match=r"missing fields \['test_accuracy'\]"):
        results.to_table([row], results.CELL_SCHEMA, "cells")


def test_sdm_defend_imports_neither_ray_tune_nor_optuna(tmp_path) -> None:
    """Training one defense (and the conformance kit) needs the plan, not the search engine."""
    code = (
        "import sys\n"
        "from harness.cli import app\n"
        f"app(['defend', {str(SMOKE)!r}, '--defense', 'random-init'], standalone_mode=False)\n"
        "print(sorted(m for m in ('ray.tune', 'optuna') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**__import__("os").environ, "SDM_CACHE_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
