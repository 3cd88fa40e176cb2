"""Does a rerun reproduce a published result? Group by group, the rerun's mean test accuracy against the published
95% interval, and each defense's gap to random-init against the published gap's interval.

Both sides are aggregated exactly as the leaderboard does (`harness.report.aggregate.aggregate`), from cells tables:
a run directory, or a cells Parquet file such as a published `results/reproduce/cells.parquet`. Groups only one side has
(another run's defenses merged into a published leaderboard, say) are listed, not compared. The verdicts are
re-derived on both sides with the leaderboard's rules (per budget, the worst budget decides, utility against bert),
and whether they agree is reported with the gap that decided each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from harness.errors import UserError
from harness.report.aggregate import aggregate
from harness.results import CELL_SCHEMA, conform, read_cells

KEY = ("defense", "attack", "task", "budget")


@dataclass(frozen=True)
class Comparison:
    groups: list[dict[str, Any]]  # one per leaderboard group both sides have
    gaps: list[dict[str, Any]]  # one per defense both sides have a harmful gap for
    only_published: list[tuple]
    only_rerun: list[tuple]

    @property
    def n_within(self) -> int:
        return sum(bool(g["within"]) for g in self.groups)


def load_cells(source: Path) -> pa.Table:
    """A run directory's cells, or a cells Parquet file."""
    source = Path(source)
    try:
        if source.is_dir():
            cells = read_cells(source)
        elif source.is_file() and source.suffix == ".parquet":
            cells = conform(pq.read_table(source), CELL_SCHEMA)
        else:
            raise UserError(f"'{source}': expected a run directory or a cells .parquet file")
    except (pa.ArrowException, ValueError, KeyError, OSError) as exc:
        raise UserError(f"'{source}': not a cells table ({exc})") from None
    if cells.num_rows == 0:
        raise UserError(f"'{source}': no finished cells")
    return cells


def _inside(value: float | None, low: float | None, high: float | None) -> bool | None:
    if value is None or low is None or high is None:
        return None  # one seed has no interval
    return low <= value <= high


def compare(published: pa.Table, rerun: pa.Table) -> Comparison:
    before, after = aggregate(published), aggregate(rerun)
    old = {tuple(r[k] for k in KEY): r for r in before.leaderboard.to_pylist() if r["status"] == "ok"}
    new = {tuple(r[k] for k in KEY): r for r in after.leaderboard.to_pylist() if r["status"] == "ok"}
    groups = []
    for key in (k for k in old if k in new):  # the published order
        a, b = old[key], new[key]
        groups.append({
            **dict(zip(KEY, key)),
            "published_mean": a["test_accuracy_mean"],
            "published_ci95": (a["ci95_low"], a["ci95_high"]),
            "rerun_mean": b["test_accuracy_mean"],
            "rerun_ci95": (b["ci95_low"], b["ci95_high"]),
            "difference": b["test_accuracy_mean"] - a["test_accuracy_mean"],
            "within": _inside(b["test_accuracy_mean"], a["ci95_low"], a["ci95_high"]),
        })
    old_gaps = {r["defense"]: r for r in before.summary.to_pylist() if r["harmful_gap"] is not None}
    new_gaps = {r["defense"]: r for r in after.summary.to_pylist() if r["harmful_gap"] is not None}
    gaps = []
    for defense in (d for d in old_gaps if d in new_gaps):
        a, b = old_gaps[defense], new_gaps[defense]
        gaps.append({
            "defense": defense,
            "published_gap": a["harmful_gap"],
            "published_ci95": (a["harmful_gap_ci95_low"], a["harmful_gap_ci95_high"]),
            "published_verdict": a["verdict"],
            "rerun_gap": b["harmful_gap"],
            "rerun_ci95": (b["harmful_gap_ci95_low"], b["harmful_gap_ci95_high"]),
            "rerun_verdict": b["verdict"],
            "within": _inside(b["harmful_gap"], a["harmful_gap_ci95_low"], a["harmful_gap_ci95_high"]),
            "published_worst": _worst(a),
            "rerun_worst": _worst(b),
            "verdicts_agree": a["verdict"] == b["verdict"],
        })
    return Comparison(groups, gaps, sorted(set(old) - set(new)), sorted(set(new) - set(old)))


def _worst(summary_row: dict[str, Any]) -> str:
    """The budget that decided a verdict and its gap, as text (the verdict rests on it, not on the mean gap)."""
    if summary_row.get("worst_budget") is None or summary_row.get("worst_budget_gap") is None:
        return "—"
    low, high = summary_row["worst_budget_gap_ci95_low"], summary_row["worst_budget_gap_ci95_high"]
    interval = _ci((low, high), True)
    return f"{summary_row['worst_budget_gap']:+.3f} {interval} @ {summary_row['worst_budget']}"


def _ci(ci: tuple[float | None, float | None], sign: bool = False) -> str:
    low, high = ci
    if low is None or high is None:
        return "—"
    fmt = "{:+.3f}" if sign else "{:.3f}"
    return f"[{fmt.format(low)}, {fmt.format(high)}]"


def _mark(within: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "— (one seed)"}[within]


def render_markdown(result: Comparison, published: str, rerun: str) -> str:
    lines = [
        f"# Rerun vs published: {rerun} against {published}",
        "",
        f"**{result.n_within} of {len(result.groups)} groups**: the rerun's mean test accuracy lies inside the "
        "published 95% interval (Student t over seeds). The rerun's own interval is shown beside it.",
        "",
        "| defense | attack | task | budget | published [95% CI] | rerun [95% CI] | difference | within |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for g in result.groups:
        lines.append(
            f"| {g['defense']} | {g['attack']} | {g['task']} | {g['budget']} | {g['published_mean']:.3f} "
            f"{_ci(g['published_ci95'])} | {g['rerun_mean']:.3f} {_ci(g['rerun_ci95'])} | {g['difference']:+.3f} | "
            f"{_mark(g['within'])} |"
        )
    if result.gaps:
        lines += [
            "",
            "Harmful gap vs random-init (worst case over attacks, mean over budgets), the verdict (re-derived on each "
            "side: the worst budget decides), and the worst budget's gap:",
            "",
            "| defense | published [95% CI] | verdict | rerun [95% CI] | verdict | within | verdicts agree "
            "| published worst budget | rerun worst budget |",
            "|---|---:|---|---:|---|---|---|---:|---:|",
        ]
        for g in result.gaps:
            lines.append(
                f"| {g['defense']} | {g['published_gap']:+.3f} {_ci(g['published_ci95'], True)} | "
                f"{g['published_verdict']} | {g['rerun_gap']:+.3f} {_ci(g['rerun_ci95'], True)} | "
                f"{g['rerun_verdict']} | {_mark(g['within'])} | {'yes' if g['verdicts_agree'] else '**no**'} | "
                f"{g['published_worst']} | {g['rerun_worst']} |"
            )
    for side, keys in (("published only", result.only_published), ("rerun only", result.only_rerun)):
        if keys:
            lines += ["", f"Not compared ({side}): " + "; ".join(" ".join(map(str, k)) for k in keys) + "."]
    return "\n".join(lines) + "\n"
