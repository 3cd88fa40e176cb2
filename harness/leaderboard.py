"""Leaderboards: the cells of one or more runs -> statistics over seeds -> published tables and plots.

A public façade over the report stage, `harness.report`, laid out by its data flow:
- `harness.report.merge`: runs -> one cells table, and the cautions a merged board owes its reader;
- `harness.report.stats`: intervals, paired differences, verdicts and data cost, on plain numbers;
- `harness.report.aggregate`: cells -> the leaderboard, summary and comparisons tables (how the numbers are made:
  its docstring);
- `harness.report.columns`: the summary's columns, one entry each (schema, computation, where shown);
- `harness.report.majority`: the majority-class accuracy of each task's test pool, read from the runs' data;
- `harness.report.render`: one module per output format (Markdown, HTML, LaTeX, terminal, figures) and their registry;
- `harness.report.publish`: `build_leaderboard` (every file of a board) and `write_report` (`sdm report`: figures and
  LaTeX for a paper), writing every file atomically.
"""

from __future__ import annotations

from harness.report.aggregate import aggregate, comparison_pairs
from harness.report.columns import SUMMARY_COLUMNS, SUMMARY_SCHEMA, Column, View
from harness.report.merge import merge_curves, merge_runs
from harness.report.publish import build_leaderboard, default_out, write_report
from harness.report.render import (
    FORMATS,
    OutputFormat,
    defense_colors,
    plot_compute,
    plot_role,
    register_format,
    render_html,
    render_markdown,
    render_terminal,
)
from harness.report.stats import BUDGET_LIMITED, data_cost
from harness.report.tables import (
    COMPARISON_SCHEMA,
    CURVES_SCHEMA,
    LEADERBOARD_SCHEMA,
    WORST_CASE,
    LeaderboardFiles,
    LeaderboardTables,
    ReportFiles,
)

__all__ = [
    "BUDGET_LIMITED", "COMPARISON_SCHEMA", "CURVES_SCHEMA", "FORMATS", "LEADERBOARD_SCHEMA", "SUMMARY_COLUMNS",
    "SUMMARY_SCHEMA", "WORST_CASE", "Column", "LeaderboardFiles", "LeaderboardTables", "OutputFormat", "ReportFiles",
    "View",
    "aggregate", "build_leaderboard", "comparison_pairs", "data_cost", "default_out", "defense_colors", "merge_curves",
    "merge_runs", "plot_compute", "plot_role", "register_format", "render_html", "render_markdown", "render_terminal",
    "write_report",
]
