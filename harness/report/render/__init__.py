"""Renderers of the leaderboard tables, one module per output format, and the registry of the file formats.

`sections` holds what every format shows (the summary from `harness.report.columns`, comparisons, one table per task
and attack); `markdown`, `html` and `latex` (summary.tex, for a paper) are the published files, `terminal` the table
the CLI prints, `plots` the figures (PNG, SVG, PDF).
A new file format is a module with a `FORMAT = OutputFormat(name, filename, render)` and one line in `FORMATS`
below (or a `register_format` call from outside the package); `build_leaderboard` writes every registered format.
"""

from __future__ import annotations

from harness.report.render import html, latex, markdown
from harness.report.render.html import render_html
from harness.report.render.markdown import render_markdown
from harness.report.render.plots import defense_colors, plot_compute, plot_role
from harness.report.render.sections import OutputFormat
from harness.report.render.terminal import render_terminal

FORMATS: dict[str, OutputFormat] = {
    markdown.FORMAT.name: markdown.FORMAT,
    html.FORMAT.name: html.FORMAT,
    latex.FORMAT.name: latex.FORMAT,
}

__all__ = ["FORMATS", "OutputFormat", "defense_colors", "plot_compute", "plot_role", "register_format",
           "render_html", "render_markdown", "render_terminal", "unregister_format"]


def register_format(fmt: OutputFormat) -> OutputFormat:
    """Publish the leaderboard in one more format as well (e.g. from a plugin); refuses a name taken."""
    if fmt.name in FORMATS:
        raise ValueError(f"output format '{fmt.name}' is registered already")
    FORMATS[fmt.name] = fmt
    return fmt


def unregister_format(name: str) -> None:
    FORMATS.pop(name, None)
