"""Renderers of the leaderboard tables: Markdown, a self-contained HTML page, PNG plots and a terminal table.

They read only the published tables (`harness.report.tables`), so a leaderboard read back from its Parquet files
renders the same as the one just aggregated. A defense is always shown with its variant (`defense_label`).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.config import REFERENCE_DEFENSE
from harness.report.stats import BLOCK_MARGIN, MIN_VERDICT_SEEDS, UTILITY_MARGIN
from harness.report.tables import (
    CONTROL_DEFENSE,
    ROLES,
    WORST_CASE,
    LeaderboardFiles,
    LeaderboardTables,
    defense_label,
    defense_labels,
)

if TYPE_CHECKING:
    from rich.table import Table


@dataclass
class _Section:
    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _labels(tables: LeaderboardTables) -> dict[str, str]:
    labels = defense_labels(tables.summary)
    for r in tables.leaderboard.select(["defense", "defense_variant"]).to_pylist():  # a defense the summary lacks
        labels.setdefault(r["defense"], defense_label(r["defense"], r["defense_variant"]))
    return labels


def _cell_text(row: dict[str, Any]) -> str:
    mean = row["test_accuracy_mean"]
    if mean is None:
        return row["status"]
    text = f"{mean:.3f} (1 seed)" if row["single_seed"] else f"{mean:.3f} ± {(row['ci95_high'] - row['ci95_low']) / 2:.3f}"
    return text + (" †" if row["n_failed_cells"] else "")


def _budget_sections(tables: LeaderboardTables) -> list[_Section]:
    rows = tables.leaderboard.to_pylist()
    labels = _labels(tables)
    sections = []
    for role in ROLES:
        role_rows = [r for r in rows if r["task_role"] == role]
        if not role_rows:
            continue
        task = role_rows[0]["task"]
        real = list(dict.fromkeys(r["attack"] for r in role_rows if r["attack"] != WORST_CASE))
        # With a single attack the worst case is that attack: no second copy of the table.
        for attack in [WORST_CASE, *(real if len(real) > 1 else [])]:
            chosen = [r for r in role_rows if r["attack"] == attack]
            budgets = sorted({r["budget"] for r in chosen})
            defenses = list(dict.fromkeys(r["defense"] for r in chosen))
            by_key = {(r["defense"], r["budget"]): r for r in chosen}
            body = [[labels[d], *[_cell_text(by_key[(d, b)]) if (d, b) in by_key else "—" for b in budgets]]
                    for d in defenses]
            what = "worst case over attacks, chosen on validation" if attack == WORST_CASE else f"attack {attack}"
            title = f"{role.capitalize()} task: {task} ({what})"
            sections.append(_Section(title, ["defense", *map(str, budgets)], body))
    return sections


def _interval_text(mean: float | None, low: float | None, high: float | None, compact: bool = False) -> str:
    if mean is None:
        return "—"
    if low is None or high is None:
        return f"{mean:+.3f} (no CI)"
    if compact:  # the t-interval is symmetric
        return f"{mean:+.3f} ± {(high - low) / 2:.3f}"
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def _gap_text(r: dict[str, Any], compact: bool = False) -> str:
    return _interval_text(r["harmful_gap"], r["harmful_gap_ci95_low"], r["harmful_gap_ci95_high"], compact)


def _worst_gap_text(r: dict[str, Any], compact: bool = False) -> str:
    if r["worst_budget"] is None:
        return "—"
    text = _interval_text(r["worst_budget_gap"], r["worst_budget_gap_ci95_low"], r["worst_budget_gap_ci95_high"],
                          compact)
    return f"{text} @ {r['worst_budget']} (n={r['worst_budget_n_pairs']})"


def _utility_text(r: dict[str, Any]) -> str:
    if r["utility_check"] is None:
        return "not checked" + ("" if r["defense"] == REFERENCE_DEFENSE else f" (no {CONTROL_DEFENSE} to compare)")
    text = _interval_text(r["utility_diff"], r["utility_diff_ci95_low"], r["utility_diff_ci95_high"])
    return f"{text} @ {r['utility_budget']}: {r['utility_check']}"


def _cost_text(r: dict[str, Any], value: float | None = None, validation: bool = False) -> str:
    value = r["data_cost_with_validation" if validation else "data_cost"] if value is None else value
    if r["data_cost_flag"] in ("no threshold", "no data"):
        return "—"
    if validation and value is None and r["data_cost_flag"] != ">max budget":
        return "— (validation rows unknown)"
    if r["data_cost_flag"] == ">max budget":
        return f"> {r['max_budget']}" + (" + validation" if validation else "")
    if r["data_cost_flag"] == "<=min budget":
        return f"≤ {value:.0f}"
    return _fmt(value, 0)


def _summary_section(tables: LeaderboardTables) -> _Section:
    rows = tables.summary.to_pylist()
    labels = _labels(tables)
    first = rows[0] if rows else {}
    threshold, desired_budget = first.get("data_cost_threshold"), first.get("desired_max_budget")
    headers = ["defense", "verdict", f"worst-budget gap vs {REFERENCE_DEFENSE} [95% CI]",
               "mean gap over budgets [95% CI]", "harmful acc (mean over budgets)",
               f"desired acc @ {desired_budget}", f"desired vs {CONTROL_DEFENSE} (worst budget)",
               f"data cost to {_fmt(threshold, 2)}", "with validation rows"]
    body = [[labels[r["defense"]], r["verdict"], _worst_gap_text(r), _gap_text(r), _fmt(r["harmful_accuracy_mean"]),
             _fmt(r["desired_accuracy_max_budget"]), _utility_text(r), _cost_text(r), _cost_text(r, validation=True)]
            for r in rows]
    margin = first.get("block_margin", BLOCK_MARGIN)
    utility_margin = first.get("utility_margin", UTILITY_MARGIN)
    rule = first.get("data_cost_threshold_rule") or "—"
    note = (f"Gap: the attacker's harmful accuracy (worst case over attacks) minus {REFERENCE_DEFENSE}'s, paired by "
            f"seed, per budget. Per budget, blocked: the CI's upper bound is below {margin:.2f}; not blocked: its "
            f"lower bound is at least {margin:.2f}. The worst budget decides (shown, with its paired seeds n); fewer "
            f"than {MIN_VERDICT_SEEDS} paired seeds: too few seeds. Blocked also needs the desired task within "
            f"{utility_margin:.2f} of {CONTROL_DEFENSE} (mean paired difference at every desired budget), else "
            f"'blocked, utility lost'. Data cost: harmful training examples to reach {_fmt(threshold, 2)} accuracy "
            f"(threshold: {rule}), interpolated between budgets; 'with validation rows' adds the labelled validation "
            "rows the attacker selected on.")
    return _Section("Summary", headers, body, note)


def _comparison_section(tables: LeaderboardTables) -> _Section | None:
    if tables.comparisons is None or tables.comparisons.num_rows == 0:
        return None
    labels = _labels(tables)
    body = [[labels.get(r["defense"], r["defense"]), labels.get(r["versus"], r["versus"]),
             f"{r['task_role']} ({r['task']})", str(r["budget"]), str(r["n_pairs"]), _interval_text(r["mean_diff"], r["ci95_low"], r["ci95_high"])]
            for r in tables.comparisons.to_pylist()]
    note = ("Paired differences (defense minus versus) of the worst case over attacks, by seed, with the 95% Student "
            "t-interval over the paired seeds: the basis of any comparative claim.")
    return _Section("Comparisons (paired by seed)", ["defense", "versus", "task", "budget", "n pairs",
                                                     "difference [95% CI]"], body, note)


INTRO = ("Test accuracy, mean ± half-width of the 95% Student t-interval over seeds. Worst case over attacks: for "
         "each seed the attack whose selected configuration had the best validation accuracy, its test accuracy, then "
         "aggregated over seeds. † some cells of the group failed (not counted as results). — no data.")


def _sections(tables: LeaderboardTables) -> list[_Section]:
    comparisons = _comparison_section(tables)
    return [_summary_section(tables), *([comparisons] if comparisons else []), *_budget_sections(tables)]


def _markdown_table(section: _Section) -> str:
    lines = [f"## {section.title}", ""]
    if section.note:
        lines += [section.note, ""]
    escape = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines.append("| " + " | ".join(escape(h) for h in section.headers) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(section.headers) - 1)) + "|")
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in section.rows]
    return "\n".join(lines) + "\n"


def render_markdown(tables: LeaderboardTables) -> str:
    runs = ", ".join(tables.runs) or "—"
    cautions = "".join(f"**Caution:** {c}.\n\n" for c in tables.cautions)
    header = f"# sdm-bench leaderboard\n\nRuns: {runs}.\n\n{cautions}{INTRO}\n"
    return "\n".join([header, *map(_markdown_table, _sections(tables))])


_CSS = """
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


def _html_table(section: _Section) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in section.headers)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in section.rows)
    note = f'<p class="note">{e(section.note)}</p>' if section.note else ""
    return f"<h2>{e(section.title)}</h2>{note}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(tables: LeaderboardTables, plots: dict[str, bytes]) -> str:
    e = html.escape
    figures = "".join(
        f'<figure><img alt="{e(role)} task: test accuracy vs data budget" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"></figure>'
        for role, png in plots.items()
    )
    provenance = "".join(f"<dt>{e(k)}</dt><dd>{e(v or '—')}</dd>" for k, v in
                         {"runs": ", ".join(tables.runs), **tables.provenance}.items())
    cautions = "".join(f"<p><strong>Caution:</strong> {e(c)}.</p>" for c in tables.cautions)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>sdm-bench leaderboard</title><style>{_CSS}</style></head><body>"
        f'<h1>sdm-bench leaderboard</h1>{cautions}<p class="note">{e(INTRO)}</p>{figures}'
        + "".join(map(_html_table, _sections(tables)))
        + f"<h2>Provenance</h2><dl>{provenance}</dl></body></html>\n"
    )


# matplotlib's tab10 without its gray (the reference's), then tab20's light companions: 18 distinct colors, so a
# diagnostics leaderboard with a dozen defenses still tells its curves apart. Beyond 18 they repeat.
_DEFENSE_COLORS = (
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
    "#aec7e8", "#ff9896", "#98df8a", "#c5b0d5", "#ffbb78", "#c49c94", "#f7b6d2", "#9edae5", "#dbdb8d",
)
_REFERENCE_COLOR = "#555555"


def defense_colors(defenses: Iterable[str]) -> dict[str, str]:
    """A plot color per defense, in order of appearance; the reference defense is always gray."""
    colors, others = {}, 0
    for defense in dict.fromkeys(defenses):
        if defense == REFERENCE_DEFENSE:
            colors[defense] = _REFERENCE_COLOR
        else:
            colors[defense] = _DEFENSE_COLORS[others % len(_DEFENSE_COLORS)]
            others += 1
    return colors


def plot_role(tables: LeaderboardTables, role: str, threshold: float | None = None) -> bytes | None:
    """PNG of worst-case test accuracy vs budget for one task role (None when the runs did not attack it).

    The harmful plot draws the data-cost threshold: `threshold`, or the summary's when not given."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    rows = [r for r in tables.leaderboard.to_pylist() if r["task_role"] == role and r["attack"] == WORST_CASE]
    if not rows:
        return None
    if threshold is None and tables.summary.num_rows:
        threshold = tables.summary.column("data_cost_threshold")[0].as_py()
    labels = _labels(tables)
    fig = Figure(figsize=(7.6, 4.2), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    drawn = False
    for defense, color in defense_colors(r["defense"] for r in rows).items():
        ok = sorted((r for r in rows if r["defense"] == defense and r["status"] == "ok"), key=lambda r: r["budget"])
        if not ok:
            continue
        drawn = True
        x = [r["budget"] for r in ok]
        mean = np.array([r["test_accuracy_mean"] for r in ok])
        low = np.array([r["ci95_low"] if r["ci95_low"] is not None else np.nan for r in ok], dtype=float)
        high = np.array([r["ci95_high"] if r["ci95_high"] is not None else np.nan for r in ok], dtype=float)
        reference = defense == REFERENCE_DEFENSE
        ax.plot(x, mean, marker="o", markersize=4, linewidth=1.8, color=color, linestyle="--" if reference else "-",
                label=labels.get(defense, defense))
        ax.fill_between(x, low, high, color=color, alpha=0.18, linewidth=0)
    task = rows[0]["task"]
    budgets = sorted({r["budget"] for r in rows})
    if drawn:
        if role == "harmful" and threshold is not None:
            ax.axhline(threshold, color="black", linestyle=":", linewidth=1, label=f"data-cost threshold {threshold:.2f}")
        ax.set_xscale("log")
        ax.set_xticks(budgets, labels=[str(b) for b in budgets])
        ax.xaxis.set_minor_locator(NullLocator())
        # Outside the axes: with many defenses a legend inside covers curves or the threshold line.
        ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.text(0.5, 0.5, "no successful cells", ha="center", va="center", transform=ax.transAxes, color="#57606a")
    who = "attacker's validation-best attack" if role == "harmful" else "validation-best attack"
    ax.set_title(f"{role.capitalize()} task ({task}): {who}, 95% CI over seeds", fontsize=10)
    ax.set_xlabel(f"{role} training examples (log scale)")
    ax.set_ylabel("test accuracy")
    ax.grid(True, alpha=0.3, linewidth=0.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def render_terminal(source: LeaderboardFiles | LeaderboardTables) -> Table:
    """A rich Table: one row per defense, the worst-case harmful accuracy per budget and the summary columns."""
    from rich.markup import escape
    from rich.table import Table

    tables = source.read() if isinstance(source, LeaderboardFiles) else source
    labels = _labels(tables)
    rows = [r for r in tables.leaderboard.to_pylist() if r["task_role"] == "harmful" and r["attack"] == WORST_CASE]
    summary = tables.summary.to_pylist()
    budgets = sorted({r["budget"] for r in rows})
    by_key = {(r["defense"], r["budget"]): r for r in rows}
    task = rows[0]["task"] if rows else "harmful task"
    first = summary[0] if summary else {}
    caption = " ".join([*(f"Caution: {c}." for c in tables.cautions), _summary_section(tables).note])
    table = Table(title=f"{task}: attacker's validation-best attack (mean ± 95% CI half-width over seeds)",
                  caption=escape(caption))
    # Short columns never wrap; on a narrow terminal the "mean ± half-width" cells wrap at the "±" instead.
    table.add_column("defense", style="bold", no_wrap=True)
    for b in budgets:
        table.add_column(f"@ {b}", justify="right")
    table.add_column(f"worst-budget gap\nvs {REFERENCE_DEFENSE}", justify="right")
    table.add_column("verdict", no_wrap=True)
    table.add_column(f"desired\n@ {first.get('desired_max_budget') or '—'}", justify="right", no_wrap=True)
    table.add_column(f"cost to\n{_fmt(first.get('data_cost_threshold'), 2)}", justify="right", no_wrap=True)
    styles = {"blocked": "green", "not blocked": "red", "inconclusive": "yellow", "too few seeds": "yellow",
              "blocked, utility lost": "red", "blocked, utility not checked": "yellow"}
    for r in summary:
        defense, verdict = r["defense"], r["verdict"]
        cells = [_cell_text(by_key[(defense, b)]) if (defense, b) in by_key else "—" for b in budgets]
        verdict_text = f"[{styles[verdict]}]{verdict}[/]" if verdict in styles else verdict
        # escaped: rich would read a variant's "[first-order]" as markup and drop it
        table.add_row(escape(labels[defense]), *cells, _worst_gap_text(r, compact=True), verdict_text,
                      _fmt(r["desired_accuracy_max_budget"]), _cost_text(r))
    return table
