"""The leaderboard's figures, drawn to be put in a paper: worst-case test accuracy against the data budget, one figure
per task role, and the harmful task's compute curves (against attacker steps, per budget). Each is written as PNG
(embedded in the HTML page), SVG and PDF.

The budget figures are small multiples: one panel per defense, each beside the two baselines (random-init, the
floor a blocked defense sits on, and bert, the unblocked encoder), instead of every defense's band stacked on one
axis. The interval over seeds is drawn as a band across budgets, or as error bars where there is one budget; the
majority class of the test pool is a line when the runs tell it (`harness.report.majority`). What the figure shows,
with the number of seeds, is its caption (`caption`), which the documents showing it print beside it (the HTML
page, figures.tex of `sdm report`) rather than drawn into it, as a journal's figure wants.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.config import REFERENCE_DEFENSE
from harness.report.render.sections import board_labels
from harness.report.tables import CONTROL_DEFENSE, COMPUTE_PLOT, ROLES, WORST_CASE, LeaderboardTables

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FIGURE_FORMATS = ("png", "svg", "pdf")  # every figure is written in each; the HTML page embeds the PNG
# matplotlib's tab10 without its gray (the reference's), then tab20's light companions: 18 distinct colors, so a
# diagnostics leaderboard with a dozen defenses still tells its curves apart. Beyond 18 they repeat.
_DEFENSE_COLORS = (
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
    "#aec7e8", "#ff9896", "#98df8a", "#c5b0d5", "#ffbb78", "#c49c94", "#f7b6d2", "#9edae5", "#dbdb8d",
)
_REFERENCE_COLOR = "#555555"
_CONTROL_COLOR = "#000000"
_PANEL_COLUMNS = 4  # at most; a board of n defenses gets about sqrt(n) columns


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


def worst_rows(tables: LeaderboardTables, role: str) -> list[dict[str, Any]]:
    return [r for r in tables.leaderboard.to_pylist() if r["task_role"] == role and r["attack"] == WORST_CASE]


def seeds_text(counts: Iterable[int]) -> str:
    counts = sorted(set(counts))
    if not counts:
        return "no seeds"
    span = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"{span} seed" + ("" if counts == [1] else "s")


def majority(tables: LeaderboardTables, role: str) -> float | None:
    first = tables.summary.slice(0, 1).to_pylist()[0] if tables.summary.num_rows else {}
    return first.get(f"{role}_majority_accuracy")


def data_threshold(tables: LeaderboardTables, threshold: float | None) -> float | None:
    if threshold is None and tables.summary.num_rows:
        return tables.summary.column("data_cost_threshold")[0].as_py()
    return threshold


def caption(tables: LeaderboardTables, role: str) -> str:
    """What the figure of `role` (a task role or COMPUTE_PLOT) shows, with the number of seeds behind it."""
    if role == COMPUTE_PLOT:
        rows = [r for r in (tables.curves.to_pylist() if tables.curves is not None else [])
                if r["task_role"] == "harmful"]
        return (f"Harmful task ({rows[0]['task'] if rows else '—'}): test accuracy of the attacker's "
                "validation-best attack against attacker steps, one panel per harmful budget; mean over "
                f"{seeds_text(r['n_seeds'] for r in rows)} of the mean of each seed's reruns (no interval drawn); "
                "dotted: the data-cost threshold.")
    rows = [r for r in worst_rows(tables, role) if r["status"] == "ok"]
    task = rows[0]["task"] if rows else "—"
    single = len({r["budget"] for r in rows}) == 1
    intervals = any(r["ci95_low"] is not None for r in rows)
    spread = ("" if not intervals else
              f" {'error bars' if single else 'bands'}: 95% Student t-interval over seeds (none for a single seed);")
    floor = majority(tables, role)
    line = (f" dotted gray: the majority class of the test pool ({floor:.3f});" if floor is not None
            else " majority class of the test pool: not known for these runs;")
    who = "attacker's validation-best attack" if role == "harmful" else "validation-best attack"
    threshold = " dash-dot: the data-cost threshold;" if role == "harmful" and data_threshold(tables, None) else ""
    return (f"{role.capitalize()} task ({task}): test accuracy of the {who} against the {role} training examples, "
            f"one panel per defense beside {REFERENCE_DEFENSE} (gray{'' if single else ', dashed'}) and {CONTROL_DEFENSE} (black); mean "
            f"over {seeds_text(r['n_seeds'] for r in rows)};{spread}{line}{threshold}".rstrip(";") + ".")


def new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def tidy(ax: Axes) -> None:
    ax.grid(True, alpha=0.3, linewidth=0.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def draw_series(ax: Axes, rows: list[dict[str, Any]], color: str, label: str, *, style: str, width: float,
                position: int | None) -> None:
    """One defense's worst-case means against budget, with its interval over seeds: a band across budgets, or,
    with one budget (`position`: its place on a categorical axis), a point with error bars."""
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["budget"])
    if not ok:
        return
    x = np.array([r["budget"] for r in ok], dtype=float) if position is None else np.array([position], dtype=float)
    mean = np.array([r["test_accuracy_mean"] for r in ok])
    low = np.array([np.nan if r["ci95_low"] is None else r["ci95_low"] for r in ok], dtype=float)
    high = np.array([np.nan if r["ci95_high"] is None else r["ci95_high"] for r in ok], dtype=float)
    if position is not None:
        ax.errorbar(x, mean, yerr=[mean - low, high - mean], fmt="o", color=color, capsize=3, markersize=4,
                    linewidth=1.2, label=label)
        return
    ax.plot(x, mean, marker="o", markersize=3, linewidth=width, color=color, linestyle=style, label=label)
    # The panel's own defense carries the eye; the baselines' intervals stay faint behind it.
    ax.fill_between(x, low, high, color=color, alpha=0.2 if width > 1.5 else 0.08, linewidth=0)


def panel_defenses(rows: list[dict[str, Any]]) -> list[str]:
    """The defenses that get a panel: every one but the baselines; a board of baselines only gets one panel."""
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    others = [d for d in defenses if d not in (REFERENCE_DEFENSE, CONTROL_DEFENSE)]
    return others or [CONTROL_DEFENSE if CONTROL_DEFENSE in defenses else defenses[0]]


def figure_role(tables: LeaderboardTables, role: str, threshold: float | None = None) -> Figure | None:
    """Worst-case test accuracy vs budget for one task role, a panel per defense (None when the runs did not attack
    it). The harmful figure draws the data-cost threshold: `threshold`, or the summary's when not given."""
    from matplotlib.ticker import NullLocator

    rows = worst_rows(tables, role)
    if not rows:
        return None
    threshold = data_threshold(tables, threshold) if role == "harmful" else None
    floor = majority(tables, role)
    labels = board_labels(tables)
    colors = defense_colors(r["defense"] for r in rows)
    budgets = sorted({r["budget"] for r in rows})
    single = len(budgets) == 1
    panels = panel_defenses(rows)
    columns = min(_PANEL_COLUMNS, math.ceil(math.sqrt(len(panels))))
    lines = math.ceil(len(panels) / columns)
    fig = new_figure(2.8 * columns + 0.6, 2.3 * lines + 0.5)
    axes = fig.subplots(lines, columns, sharex=not single, sharey=True, squeeze=False).ravel()
    by_defense = {d: [r for r in rows if r["defense"] == d] for d in colors}
    for ax, defense in zip(axes, panels):
        series = [(REFERENCE_DEFENSE, _REFERENCE_COLOR, "--", 1.2), (CONTROL_DEFENSE, _CONTROL_COLOR, "-", 1.0)]
        if defense not in (REFERENCE_DEFENSE, CONTROL_DEFENSE):
            series.append((defense, colors[defense], "-", 2.0))
        series = [s for s in series if s[0] in by_defense]
        for position, (name, color, style, width) in enumerate(series):
            draw_series(ax, by_defense[name], color, labels.get(name, name), style=style, width=width,
                        position=position if single else None)
        if floor is not None:
            ax.axhline(floor, color="#777777", linestyle=":", linewidth=1.1, label=f"majority class {floor:.3f}")
        if threshold is not None:
            ax.axhline(threshold, color="#999999", linestyle="-.", linewidth=0.8,
                       label=f"data-cost threshold {threshold:.2f}")
        baseline = defense in (REFERENCE_DEFENSE, CONTROL_DEFENSE)
        ax.set_title("baselines" if baseline else labels.get(defense, defense), fontsize=9)
        if single:  # one budget: the defenses side by side on a categorical axis
            ax.set_xticks(range(len(series)), labels=[labels.get(n, n) for n, *_ in series], fontsize=7)
            ax.set_xlim(-0.6, len(series) - 0.4)
        else:
            ax.set_xscale("log")
            ax.set_xticks(budgets, labels=[str(b) for b in budgets])
            ax.xaxis.set_minor_locator(NullLocator())
        ax.tick_params(labelsize=8)
        tidy(ax)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax in axes[::columns]:
        ax.set_ylabel("test accuracy", fontsize=8)
    for ax in axes[(lines - 1) * columns:] if not single else axes[:len(panels)]:
        ax.set_xlabel(f"{role} training examples" + (f": {budgets[0]}" if single else ""), fontsize=8)
    # The legend names what every panel shares (the baselines, the lines); each panel's title names its defense.
    shown = {labels.get(d, d) for d in panels if d not in (REFERENCE_DEFENSE, CONTROL_DEFENSE)}
    handles, names = [], []
    for ax in axes[:len(panels)]:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            if name not in names and name not in shown:
                handles.append(handle)
                names.append(name)
    if shown:
        from matplotlib.lines import Line2D

        handles.insert(2, Line2D([], [], color=colors[panels[0]], linewidth=2.0, marker="o", markersize=3))
        names.insert(2, "the panel's defense")
    fig.legend(handles, names, frameon=False, fontsize=8, loc="outside upper center",
               ncols=min(len(names), 2 * columns))
    return fig


def figure_compute(tables: LeaderboardTables, threshold: float | None = None) -> Figure | None:
    """The harmful task's compute curves: worst-case test accuracy against attacker steps, one panel per budget,
    mean over seeds of the reruns' curves (`tables.curves`). None when the runs wrote no curves."""
    rows = [r for r in (tables.curves.to_pylist() if tables.curves is not None else []) if r["task_role"] == "harmful"]
    if not rows:
        return None
    threshold = data_threshold(tables, threshold)
    labels = board_labels(tables)
    budgets = sorted({r["budget"] for r in rows})
    fig = new_figure(3.0 * len(budgets) + 1.8, 3.6)
    axes = fig.subplots(1, len(budgets), sharey=True, squeeze=False)[0]
    colors = defense_colors(r["defense"] for r in rows)
    for ax, budget in zip(axes, budgets):
        for defense, color in colors.items():
            points = sorted((r["step"], r["test_accuracy_mean"]) for r in rows
                            if r["defense"] == defense and r["budget"] == budget)
            if not points:
                continue
            x, y = zip(*points)
            ax.plot(x, y, color=color, linewidth=1.6, marker="o", markersize=2.5,
                    linestyle="--" if defense == REFERENCE_DEFENSE else "-",
                    label=labels.get(defense, defense) if budget == budgets[0] else None)
        if threshold is not None:
            ax.axhline(threshold, color="black", linestyle=":", linewidth=1,
                       label=f"data-cost threshold {threshold:.2f}" if budget == budgets[0] else None)
        ax.set_title(f"budget {budget}", fontsize=9)
        ax.set_xlabel("attacker steps")
        tidy(ax)
    axes[0].set_ylabel("test accuracy")
    fig.legend(frameon=False, fontsize=8, loc="outside right center")
    return fig


def figures(tables: LeaderboardTables) -> dict[str, Figure]:
    """Every figure of the board: a task role (or COMPUTE_PLOT) -> its figure, for those the runs allow."""
    drawn = {role: figure_role(tables, role) for role in ROLES}
    drawn[COMPUTE_PLOT] = figure_compute(tables)
    return {role: fig for role, fig in drawn.items() if fig is not None}


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    """The figure as `fmt` (one of FIGURE_FORMATS), without a creation date, so a rebuilt figure is the same file."""
    from matplotlib import rc_context

    buffer = io.BytesIO()
    metadata = {"png": {}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}[fmt]
    # pdf.fonttype 42: TrueType text a journal's toolchain and an editor can read, instead of Type 3 glyphs.
    with rc_context({"svg.hashsalt": "sdm-bench", "pdf.fonttype": 42}):
        fig.savefig(buffer, format=fmt, metadata=metadata)
    return buffer.getvalue()


def plot_role(tables: LeaderboardTables, role: str, threshold: float | None = None) -> bytes | None:
    """PNG of `figure_role` (None when the runs did not attack the role)."""
    fig = figure_role(tables, role, threshold)
    return None if fig is None else figure_bytes(fig, "png")


def plot_compute(tables: LeaderboardTables, threshold: float | None = None) -> bytes | None:
    """PNG of `figure_compute` (None when the runs wrote no curves)."""
    fig = figure_compute(tables, threshold)
    return None if fig is None else figure_bytes(fig, "png")
