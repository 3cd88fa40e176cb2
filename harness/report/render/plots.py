"""The leaderboard's plots: worst-case test accuracy against the data budget, one PNG per task role, and the
harmful task's compute curves (against attacker steps, per budget)."""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np

from harness.config import REFERENCE_DEFENSE
from harness.report.render.sections import board_labels
from harness.report.tables import WORST_CASE, LeaderboardTables

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
    labels = board_labels(tables)
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


def plot_compute(tables: LeaderboardTables, threshold: float | None = None) -> bytes | None:
    """PNG of the harmful task's compute curves: worst-case test accuracy against attacker steps, one panel per
    budget, mean over seeds of the reruns' curves (`tables.curves`). None when the runs wrote no curves."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in (tables.curves.to_pylist() if tables.curves is not None else []) if r["task_role"] == "harmful"]
    if not rows:
        return None
    if threshold is None and tables.summary.num_rows:
        threshold = tables.summary.column("data_cost_threshold")[0].as_py()
    labels = board_labels(tables)
    budgets = sorted({r["budget"] for r in rows})
    fig = Figure(figsize=(3.4 * len(budgets) + 1.8, 3.6), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
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
        ax.grid(True, alpha=0.3, linewidth=0.6)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    axes[0].set_ylabel("test accuracy")
    fig.suptitle(f"Harmful task ({rows[0]['task']}): attacker's validation-best attack, mean over seeds of its "
                 "reruns", fontsize=10)
    fig.legend(frameon=False, fontsize=8, loc="outside right center")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
