"""The published leaderboards, rebuilt from their cells files, against golden copies of the report's output.

The golden copies under tests/golden/ were written by the report code before it was split by pipeline stage, so
any change to the numbers or to their rendering shows here. Regenerated once since, when compute cost and search
diagnostics came: every earlier column and value is unchanged; the leaderboard table gained `n_still_improving`,
`n_at_edge`, `search_edges` and the summary `compute_cost_*` and `search_*` columns, all null for these old cells
(but `compute_cost_flag`, "no curve"), and the Markdown and HTML summary a "compute cost" column reading "—".
Regenerated again when the HTML page became sortable, with a drill-down (issue 22): the leaderboard, comparisons,
Markdown and terminal copies are unchanged; the summary gained `harmful_majority_accuracy` and
`desired_majority_accuracy`, null here (these published folders hold no run.json to read the test pools from).
The protocol-1 board moved to results/reproduce-protocol1/ unchanged when the republication (issue 21) took
results/reproduce/; that board's golden copies were written from its own cells and the curves published beside them.
The diagnostics board's Markdown and HTML changed once more in one cell: mlac-k16-240, which has no desired-task
cells, reads "not checked (no desired-task cells)" where it read "no bert to compare".
The reproduce board's Markdown, HTML and terminal copies gained one caution when merging learnt to tell a
published folder's curves.parquet (its board's means over seeds) from per-trial curves: this board's cells carry
none, which it now says (its tables are unchanged: those curves had always been dropped, silently).
Checked: the leaderboard, summary and comparisons Parquet tables (schema, metadata and values), the Markdown, the
HTML with its embedded plots cut out (PNG bytes depend on matplotlib and its fonts), and the terminal table as rich
prints it at a fixed width.

Regenerate (only when a change to the output is intended): SDM_REGEN_GOLDEN=1 pytest tests/test_report_golden.py
"""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from harness.leaderboard import build_leaderboard, render_terminal
from harness.report.merge import published_curves

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
REGEN = os.environ.get("SDM_REGEN_GOLDEN") == "1"

# board -> (run name, cells file) in the order the published leaderboard lists its runs
BOARDS = {
    "reproduce": [("reproduce", "reproduce/cells.parquet")],
    "reproduce-protocol1": [("reproduce", "reproduce-protocol1/cells.parquet"),
                            ("reproduce-peers", "reproduce-protocol1/cells-peers.parquet")],
    "reproduce-diagnostics": [
        (f"reproduce-{name}", f"reproduce-diagnostics/cells-{stem or name}.parquet")
        for name, stem in (("5e5", "reproduce-5e5"), ("peers-5e5", None), ("mlac-mixed", None), ("mlac-k16", None),
                           ("mlac-k16-240", None), ("strong-finetune", None), ("strong-finetune-more", None),
                           ("adversarial-reset", None), ("bert-matched", None), ("bert-matched-long", None),
                           ("bert-lr", None), ("bert-lr-long", None), ("adversarial-reset-bert-lr", None))
    ],
}
TABLES = ("leaderboard", "summary", "comparisons")


def _html_without_images(page: str) -> str:
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,...", page)


def _terminal_text(files) -> str:
    from rich.console import Console

    console = Console(file=io.StringIO(), record=True, width=250, color_system=None, force_terminal=False)
    console.print(render_terminal(files))
    return console.export_text()


def _check_text(path: Path, text: str) -> None:
    if REGEN:
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{path.name} differs from its golden copy"


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_published_boards_rebuild_to_their_golden_copies(tmp_path: Path, board: str):
    runs = []
    for name, cells in BOARDS[board]:  # a run folder per published cells file, as `sdm leaderboard` reads them
        (tmp_path / name / "cells").mkdir(parents=True)
        shutil.copyfile(ROOT / "results" / cells, tmp_path / name / "cells" / "cells.parquet")
        curves = published_curves(ROOT / "results" / cells)
        if curves.is_file():  # published beside the cells since curves exist
            shutil.copyfile(curves, tmp_path / name / "curves.parquet")
        runs.append(tmp_path / name)
    files = build_leaderboard(runs, tmp_path / "board")
    golden = GOLDEN / board
    golden.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        built = pq.read_table(getattr(files, name))
        if REGEN:
            shutil.copyfile(getattr(files, name), golden / f"{name}.parquet")
        expected = pq.read_table(golden / f"{name}.parquet")
        assert built.schema.equals(expected.schema, check_metadata=True), name
        assert built.equals(expected), f"{name} table differs from its golden copy"
    _check_text(golden / "leaderboard.md", files.markdown.read_text(encoding="utf-8"))
    _check_text(golden / "leaderboard.html", _html_without_images(files.html.read_text(encoding="utf-8")))
    _check_text(golden / "terminal.txt", _terminal_text(files))
    assert set(files.plots) == {"harmful", "desired"}
