"""The leaderboard as one self-contained HTML page (leaderboard.html): no network, no external assets.

In reading order: the cautions, where the numbers come from (data source, attack suite, seeds, trial counts,
majority class), the summary (sortable and filterable, with a CSV download of every summary column), what each
metric means, the figures, a drill-down per defense (each cell's selected configuration, per-seed values, links to
its config and trials files), the comparisons and per-budget tables, and the provenance. The sorting and filtering
are the page's one inline script (`harness.report.render.interactive`).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import re
from urllib.parse import quote

from harness.report.render.details import DefenseDetail, board_facts, defense_details, is_standin
from harness.report.render.interactive import SCRIPT
from harness.report.render.plots import caption
from harness.report.render.sections import INTRO, OutputFormat, Section, comparison_section, budget_sections
from harness.report.render.sections import summary_section
from harness.report.tables import LeaderboardTables

e = html.escape

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 72rem;
       color: #1f2328; padding: 0 1rem; line-height: 1.4; }
h1 { font-size: 1.6rem; margin-bottom: 0.3rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.85rem; }
th, td { border: 1px solid #d0d7de; padding: 0.3rem 0.6rem; text-align: right; vertical-align: top; }
th:first-child, td:first-child, td.text, th.text { text-align: left; }
th { background: #f6f8fa; } tr:nth-child(even) td { background: #fbfcfd; }
th button.sort { all: unset; cursor: pointer; } th button.sort::after { content: " \\2195"; color: #8c959f; }
th[aria-sort="ascending"] button.sort::after { content: " \\2191"; color: #1f2328; }
th[aria-sort="descending"] button.sort::after { content: " \\2193"; color: #1f2328; }
p.note { color: #57606a; font-size: 0.85rem; max-width: 62rem; }
p.banner { background: #fff8c5; border: 1px solid #d4a72c; padding: 0.5rem 0.8rem; border-radius: 4px; }
.toolbar { display: flex; gap: 1rem; align-items: center; font-size: 0.85rem; }
.toolbar input { padding: 0.2rem 0.4rem; min-width: 16rem; }
figure { margin: 0 0 1.5rem; } figure img { max-width: 100%; height: auto; }
figcaption { color: #57606a; font-size: 0.8rem; max-width: 62rem; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.25rem 1rem; font-size: 0.85rem; }
dt { font-weight: 600; } dd { margin: 0; }
dl.provenance dd { font-family: ui-monospace, monospace; word-break: break-all; }
dl.provenance .term { font-family: system-ui, sans-serif; color: #57606a; }
details { margin: 0.4rem 0; } summary { cursor: pointer; font-weight: 600; }
tr.chosen td, tr.chosen:nth-child(even) td { background: #e6f4ea; }
"""

METRICS = (
    ("test accuracy", "accuracy on the test pool, read once per rerun of the configuration the search selected on "
                      "validation; a cell's value is the mean over its reruns, a row's the mean over seeds"),
    ("worst case over attacks", "per seed, the attack whose selected configuration had the best validation "
                                "accuracy, and its test accuracy: the attacker a defense must withstand"),
    ("± and [low, high]", "half-width and bounds of the 95% Student t-interval over seeds (paired by seed for "
                          "differences); one seed has no interval"),
    ("gap vs random-init", "the defense's harmful accuracy minus random-init's, paired by seed: near 0 is blocked"),
    ("verdict", "blocked, not blocked or inconclusive from the gap's interval at the worst budget, with the desired "
                "task kept within a margin of bert; the exact rule is under the summary"),
    ("desired vs bert", "the desired-task accuracy minus bert's (the matched control), paired by seed"),
    ("data cost", "harmful training examples the attacker needs to reach the threshold accuracy, interpolated "
                  "between budgets"),
    ("compute cost", "attacker steps (examples seen) until the mean test curve reaches the threshold at the largest "
                     "budget"),
    ("majority class", "the accuracy of always answering the test pool's most frequent class: a model at it has "
                       "learnt nothing"),
    ("† and —", "some cells of the group failed (not counted as results); no data"),
)


# What each provenance entry is, beside its value (a bare hash means nothing to a reader).
PROVENANCE_TERMS = {
    "runs": "the run folders (or published cells files) merged into this board",
    "experiment": "the configs' experiment names", "package_version": "sdm-bench's version",
    "git_commit": "the commit of the code that ran", "model_id": "the base encoder",
    "data_fingerprint": "content hash of the loaded corpus", "config_hash": "content hash of each run's config",
    "selection": "heldout: selection on the attacker's validation rows; reference: on test (optimistic)",
    "schema_version": "of the results tables", "torch_version": "", "ray_version": "",
    "hardware": "where the cells ran",
}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def html_table(section: Section, table_id: str, links: dict[str, str] | None = None, tools: str = "") -> str:
    """A sortable table with its filter box (and `tools` beside it); `links`: first-column text -> the anchor it
    links to."""
    head = "".join(f"<th>{e(h)}</th>" for h in section.headers)
    rows = []
    for row in section.rows:
        first = row[0]
        first = f'<a href="#{links[first]}">{e(first)}</a>' if links and first in links else e(first)
        rows.append(f"<tr><td>{first}</td>" + "".join(f"<td>{e(c)}</td>" for c in row[1:]) + "</tr>")
    note = f'<p class="note">{e(section.note)}</p>' if section.note else ""
    return (f'<h2 id="{table_id}-title">{e(section.title)}</h2>'
            f'<div class="toolbar"><input type="search" class="filter" data-table="{table_id}" '
            f'placeholder="filter rows" aria-label="filter the rows of {e(section.title)}">'
            f'<span id="{table_id}-count"></span>{tools}</div>'
            f'<table class="sortable" id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody>'
            f"</table>{note}")


def summary_csv(tables: LeaderboardTables) -> str:
    """Every column of the summary table, as a CSV file's text."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(tables.summary.column_names)
    writer.writerows([["" if v is None else v for v in row.values()] for row in tables.summary.to_pylist()])
    return out.getvalue()


def accuracy_text(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def drilldown(detail: DefenseDetail) -> str:
    # Runs before the found model was replayed have none: their tables keep the columns they always had.
    found = any(c.found_test_accuracy is not None for c in detail.cells)
    text_columns = {"attack", "status", "worst case", "selected configuration", "files"}
    head = "".join(f'<th class="text">{h}</th>' if h in text_columns else f"<th>{h}</th>" for h in (
        "task", "attack", "budget", "seed", "status", "worst case", "selected configuration", "trials", "val acc",
        "test acc (± reruns)", *(["found model: val / test acc"] if found else []), "files"))
    rows = []
    for c in detail.cells:
        spread = c.test_accuracy is not None and c.test_accuracy_std is not None
        test = accuracy_text(c.test_accuracy) + (f" ± {c.test_accuracy_std:.3f}" if spread else "")
        links = [f'<a href="{e(quote(path))}">{name}</a>' for name, path in
                 (("config", c.files.config), ("trials", c.files.trials)) if path]
        cells = [(f"{c.role}: {c.task}", ""), (c.attack, "text"), (str(c.budget), ""), (str(c.seed), ""),
                 (c.status, "text"), ("chosen" if c.chosen else "", "text"), (c.hyperparameters, "text"),
                 ("—" if c.n_trials is None else str(c.n_trials), ""),
                 (accuracy_text(c.val_accuracy), ""), (test, "")]
        if found:
            cells.append((f"{accuracy_text(c.found_val_accuracy)} / {accuracy_text(c.found_test_accuracy)}", ""))
        body = "".join(f'<td class="{kind}">{e(text)}</td>' if kind else f"<td>{e(text)}</td>" for text, kind in cells)
        files = " · ".join(links) or "not published"
        rows.append(f'<tr class="{"chosen" if c.chosen else "other"}">{body}<td class="text">{files}</td></tr>')
    table_id = f"cells-{slug(detail.defense)}"
    return (f'<details class="defense" id="defense-{slug(detail.defense)}"><summary>{e(detail.label)}: '
            f'{e(detail.verdict)} ({len(detail.cells)} cells)</summary>'
            f'<div class="toolbar"><input type="search" class="filter" data-table="{table_id}" placeholder="filter '
            f'cells" aria-label="filter the cells of {e(detail.label)}"><span id="{table_id}-count"></span></div>'
            f'<table class="sortable" id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody>'
            "</table></details>")


def render_html(tables: LeaderboardTables, plots: dict[str, bytes]) -> str:
    facts = board_facts(tables)
    details = defense_details(tables)
    banner = ('<p class="banner"><strong>Synthetic data.</strong> These numbers come from the synthetic stand-in '
              "corpus, not from Bias in Bios.</p>" if is_standin_text(tables) else "")
    cautions = "".join(f"<p><strong>Caution:</strong> {e(c)}.</p>" for c in tables.cautions)
    facts_html = "".join(f"<dt>{e(f.name)}</dt><dd>{e(f.text)}</dd>" for f in facts)
    summary = summary_section(tables, FORMAT.name)
    anchors = {d.label: f"defense-{slug(d.defense)}" for d in details}
    download = (f'<a download="summary.csv" href="data:text/csv;charset=utf-8,{quote(summary_csv(tables))}">'
                "download the summary as CSV</a> (every column of summary.parquet)")
    metrics = "".join(f"<dt>{e(term)}</dt><dd>{e(text)}</dd>" for term, text in METRICS)
    figures = "".join(
        f'<figure><img alt="{e(caption(tables, role))}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode("ascii")}"><figcaption>{e(caption(tables, role))} SVG and PDF: '
        f"{e(role)}.svg, {e(role)}.pdf beside this page.</figcaption></figure>"
        for role, png in plots.items()
    )
    comparisons = comparison_section(tables)
    rest = ([html_table(comparisons, "comparisons")] if comparisons else []) + [
        html_table(s, slug(s.title)) for s in budget_sections(tables)]
    provenance = "".join(
        f"<dt>{e(k.replace('_', ' '))}</dt><dd>{e(v or '—')}"
        + (f' <span class="term">({e(PROVENANCE_TERMS[k])})</span>' if PROVENANCE_TERMS.get(k) else "") + "</dd>"
        for k, v in {"runs": ", ".join(tables.runs), **tables.provenance}.items())
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>sdm-bench leaderboard</title><style>{CSS}</style></head><body>"
        f"<h1>sdm-bench leaderboard</h1>{banner}{cautions}"
        + (f'<dl class="facts" id="facts">{facts_html}</dl>' if facts else "")
        + html_table(summary, "summary", anchors, download)
        + f'<p class="note">{e(INTRO)}</p>'
        + f'<details id="metrics"><summary>What the columns mean</summary><dl>{metrics}</dl></details>'
        + (f'<h2 id="figures">Figures</h2>{figures}' if figures else "")
        + (f'<h2 id="defenses">Per defense: every cell</h2><p class="note">Each cell: the configuration its '
           "attack search selected on validation, its trials, and the mean test accuracy of that configuration's "
           "reruns (± their std). Shaded, \"chosen\": the cell the worst case over attacks took for its seed.</p>"
           + "".join(map(drilldown, details)) if details else "")
        + "".join(rest)
        + f'<h2>Provenance</h2><dl class="provenance">{provenance}</dl>'
        + f"<script>{SCRIPT}</script></body></html>\n"
    )


def is_standin_text(tables: LeaderboardTables) -> bool:
    ids = set(tables.cells.column("data_id").to_pylist()) if tables.cells is not None else set()
    return bool(ids) and all(is_standin(str(i)) for i in ids)


FORMAT = OutputFormat("html", "leaderboard.html", render_html)
