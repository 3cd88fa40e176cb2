"""The leaderboard as one self-contained HTML page (leaderboard.html), its plots embedded."""

from __future__ import annotations

import base64
import html

from harness.report.render.sections import INTRO, OutputFormat, Section, sections
from harness.report.tables import COMPUTE_PLOT, LeaderboardTables

ALT = {COMPUTE_PLOT: "harmful task: test accuracy vs attacker steps, per budget"}

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 70rem;
       color: #1f2328; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #d0d7de; padding: 0.3rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f6f8fa; } tr:nth-child(even) td { background: #fbfcfd; }
p.note { color: #57606a; font-size: 0.85rem; max-width: 60rem; }
figure { display: inline-block; margin: 0 1rem 1rem 0; } img { max-width: 100%; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2rem 1rem; font-size: 0.85rem; }
dt { font-weight: 600; } dd { margin: 0; font-family: ui-monospace, monospace; word-break: break-all; }
"""


def html_table(section: Section) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in section.headers)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in section.rows)
    note = f'<p class="note">{e(section.note)}</p>' if section.note else ""
    return f"<h2>{e(section.title)}</h2>{note}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(tables: LeaderboardTables, plots: dict[str, bytes]) -> str:
    e = html.escape
    figures = "".join(
        f'<figure><img alt="{e(ALT.get(role, f"{role} task: test accuracy vs data budget"))}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"></figure>'
        for role, png in plots.items()
    )
    provenance = "".join(f"<dt>{e(k)}</dt><dd>{e(v or '—')}</dd>" for k, v in
                         {"runs": ", ".join(tables.runs), **tables.provenance}.items())
    cautions = "".join(f"<p><strong>Caution:</strong> {e(c)}.</p>" for c in tables.cautions)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>sdm-bench leaderboard</title><style>{CSS}</style></head><body>"
        f'<h1>sdm-bench leaderboard</h1>{cautions}<p class="note">{e(INTRO)}</p>{figures}'
        + "".join(map(html_table, sections(tables, FORMAT.name)))
        + f"<h2>Provenance</h2><dl>{provenance}</dl></body></html>\n"
    )


FORMAT = OutputFormat("html", "leaderboard.html", render_html)
