"""The leaderboard as a rich table for the terminal: one row per defense, the worst-case harmful accuracy per budget
after the defense, then the summary columns with a TERMINAL view (`harness.report.columns`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.report import columns
from harness.report.columns import TERMINAL
from harness.report.render.sections import harmful_budget_cells, majority_note, summary_note
from harness.report.tables import LeaderboardFiles, LeaderboardTables

if TYPE_CHECKING:
    from rich.table import Table


def render_terminal(source: LeaderboardFiles | LeaderboardTables) -> Table:
    """A rich Table: one row per defense, the worst-case harmful accuracy per budget and the summary columns."""
    from rich.markup import escape
    from rich.table import Table

    tables = source.read() if isinstance(source, LeaderboardFiles) else source
    summary = tables.summary.to_pylist()
    budgets, cells = harmful_budget_cells(tables)
    task = next((r["task"] for r in tables.leaderboard.to_pylist() if r["task_role"] == "harmful"), "harmful task")
    first = summary[0] if summary else {}
    caption = " ".join([*(f"Caution: {c}." for c in tables.cautions), *filter(None, [majority_note(tables)]),
                        summary_note(tables)])
    table = Table(title=f"{task}: attacker's validation-best attack (mean ± 95% CI half-width over seeds)",
                  caption=escape(caption))
    head, *rest = columns.shown(TERMINAL)
    # Short columns never wrap; on a narrow terminal the "mean ± half-width" cells wrap at the "±" instead.
    table.add_column(head.title(first), justify=head.justify, no_wrap=head.no_wrap, style=head.style)
    for b in budgets:
        table.add_column(f"@ {b}", justify="right")
    for view in rest:
        table.add_column(view.title(first), justify=view.justify, no_wrap=view.no_wrap, style=view.style)
    for r in summary:
        # escaped: rich would read a variant's "[first-order]" as markup and drop it
        texts = [escape(view.text(r)) for view in (head, *rest)]
        styles = [view.cell_style(r) if view.cell_style else None for view in (head, *rest)]
        texts = [f"[{style}]{text}[/]" if style else text for text, style in zip(texts, styles)]
        table.add_row(texts[0], *cells[r["defense"]], *texts[1:])
    return table
