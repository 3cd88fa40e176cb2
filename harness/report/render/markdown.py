"""The leaderboard as Markdown (leaderboard.md)."""

from __future__ import annotations

from harness.report.render.sections import INTRO, OutputFormat, Section, majority_note, sections
from harness.report.tables import LeaderboardTables


def markdown_table(section: Section) -> str:
    lines = [f"## {section.title}", ""]
    if section.note:
        lines += [section.note, ""]
    escape = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines.append("| " + " | ".join(escape(h) for h in section.headers) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(section.headers) - 1)) + "|")
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in section.rows]
    return "\n".join(lines) + "\n"


def render_markdown(tables: LeaderboardTables, plots: dict[str, bytes] | None = None) -> str:
    """The board as Markdown; the plots are files beside it, so `plots` is not read."""
    runs = ", ".join(tables.runs) or "—"
    cautions = "".join(f"**Caution:** {c}.\n\n" for c in tables.cautions)
    majority = f"\n{majority_note(tables)}\n" if majority_note(tables) else ""
    header = f"# sdm-bench leaderboard\n\nRuns: {runs}.\n\n{cautions}{INTRO}\n{majority}"
    return "\n".join([header, *map(markdown_table, sections(tables, FORMAT.name))])


FORMAT = OutputFormat("markdown", "leaderboard.md", render_markdown)
