"""The summary's columns, one entry each: its Parquet name and type, how it is computed, and where it is shown.

`SUMMARY_COLUMNS` is the only list of them. The summary schema (`SUMMARY_SCHEMA`) is read off it, each summary row
is computed with it from a defense's `DefenseFacts` (`harness.report.aggregate`), and every renderer lays out the
summary from the entries' views: `BOARD` views are the summary table of every file format (Markdown, HTML and any
format registered later, see `harness.report.render`), `TERMINAL` views the table `sdm run` and `sdm leaderboard`
print. A column without a view is in the Parquet file only. docs/adding-a-report-column.md walks through adding one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from harness.config import REFERENCE_DEFENSE
from harness.report.merge import search_caution_text
from harness.report.stats import budget_call
from harness.report.tables import CONTROL_DEFENSE, defense_label
from harness.results import SCHEMA_VERSION, to_table

if TYPE_CHECKING:
    from harness.report.aggregate import DefenseFacts

BOARD = "board"  # every file format: Markdown, HTML and any registered later
TERMINAL = "terminal"  # the rich table printed by the CLI
VERDICT_STYLES = {"blocked": "green", "not blocked": "red", "inconclusive": "yellow", "too few seeds": "yellow",
                  "blocked, utility lost": "red", "blocked, utility not checked": "yellow",
                  "not established (attack budget-limited)": "yellow"}


@dataclass(frozen=True)
class View:
    """How a column is shown in one place: where, at which position, under which header, with which text."""

    where: str  # BOARD, TERMINAL, or one format's name (e.g. "markdown") to show it there only
    order: int  # position among the columns shown there, ascending
    header: str | Callable[[dict[str, Any]], str]  # a callable reads the summary's first row ({} when empty)
    text: Callable[[dict[str, Any]], str]  # a summary row -> its cell's text
    justify: str = "right"  # terminal layout: justify, no_wrap, the column's style, a cell's style (by row)
    no_wrap: bool = False
    style: str | None = None
    cell_style: Callable[[dict[str, Any]], str | None] | None = None

    def shown_in(self, fmt: str) -> bool:
        return self.where == fmt or (self.where == BOARD and fmt != TERMINAL)

    def title(self, first: dict[str, Any]) -> str:
        return self.header(first) if callable(self.header) else self.header


@dataclass(frozen=True)
class Column:
    """One summary column: Parquet name and type, its value from a defense's facts, and its views (none: Parquet
    only)."""

    name: str
    type: pa.DataType
    compute: Callable[[DefenseFacts], Any]
    views: tuple[View, ...] = ()

    @property
    def field(self) -> pa.Field:
        return pa.field(self.name, self.type)


# -- texts of the shown columns -----------------------------------------------------------------------------------
def fmt_number(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def interval_text(mean: float | None, low: float | None, high: float | None, compact: bool = False) -> str:
    if mean is None:
        return "—"
    if low is None or high is None:
        return f"{mean:+.3f} (no CI)"
    if compact:  # the t-interval is symmetric
        return f"{mean:+.3f} ± {(high - low) / 2:.3f}"
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"


def gap_text(r: dict[str, Any]) -> str:
    return interval_text(r["harmful_gap"], r["harmful_gap_ci95_low"], r["harmful_gap_ci95_high"])


def worst_gap_text(r: dict[str, Any], compact: bool = False) -> str:
    if r["worst_budget"] is None:
        return "—"
    text = interval_text(r["worst_budget_gap"], r["worst_budget_gap_ci95_low"], r["worst_budget_gap_ci95_high"],
                         compact)
    return f"{text} @ {r['worst_budget']} (n={r['worst_budget_n_pairs']})"


def utility_text(r: dict[str, Any]) -> str:
    if r["utility_check"] is None:
        if r["desired_accuracy_max_budget"] is None:
            return "not checked (no desired-task cells)"
        return "not checked" + ("" if r["defense"] == REFERENCE_DEFENSE else f" (no {CONTROL_DEFENSE} to compare)")
    text = interval_text(r["utility_diff"], r["utility_diff_ci95_low"], r["utility_diff_ci95_high"])
    return f"{text} @ {r['utility_budget']}: {r['utility_check']}"


def cost_text(r: dict[str, Any], validation: bool = False) -> str:
    value = r["data_cost_with_validation" if validation else "data_cost"]
    if r["data_cost_flag"] in ("no threshold", "no data"):
        return "—"
    if validation and value is None and r["data_cost_flag"] != ">max budget":
        return "— (validation rows unknown)"
    if r["data_cost_flag"] == ">max budget":
        return f"> {r['max_budget']}" + (" + validation" if validation else "")
    if r["data_cost_flag"] == "<=min budget":
        return f"≤ {value:.0f}"
    return fmt_number(value, 0)


def compute_text(r: dict[str, Any]) -> str:
    """Attacker steps (examples seen) to the threshold at the largest budget: "340 steps (8160 examples)"."""
    flag, steps, examples = r["compute_cost_flag"], r["compute_cost_steps"], r["compute_cost_examples"]
    if flag == ">last check":
        return "not reached"
    if steps is None:
        return "—"
    at_most = "≤ " if flag == "<=first check" else ""
    seen = "" if examples is None else f" ({at_most}{examples:.0f} examples)"
    return f"{at_most}{steps:.0f} steps{seen}"


def by_budget_text(compute: dict[int, tuple[float | None, float | None, str]]) -> str | None:
    """"budget:steps" per budget ("budget:>last check" and the like where there is no number), joined by ","; None
    when no budget has a curve (runs written before curves existed)."""
    if all(flag in ("no curve", "no threshold") for _, _, flag in compute.values()):
        return None
    parts = [f"{b}:{steps:.0f}" if steps is not None and flag != "<=first check" else
             f"{b}:<={steps:.0f}" if steps is not None else f"{b}:{flag}" for b, (steps, _, flag) in compute.items()]
    return ",".join(parts) or None


def _at_max(f: DefenseFacts) -> tuple[float | None, float | None, str]:
    return f.compute.get(f.max_budget, (None, None, "no curve"))


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def _count(cells: list[dict[str, Any]], column: str) -> int | None:
    """How many cells have `column` true; None when none of them has the column set."""
    known = [c.get(column) for c in cells if c.get(column) is not None]
    return sum(map(bool, known)) if known else None


def _of(difference: Any, attribute: str) -> Any:
    return getattr(difference, attribute) if difference else None


# -- the columns, in Parquet order --------------------------------------------------------------------------------
SUMMARY_COLUMNS: tuple[Column, ...] = (
    Column("schema_version", pa.int32(), lambda f: SCHEMA_VERSION),
    Column("defense", pa.string(), lambda f: f.defense, (
        View(BOARD, 0, "defense", lambda r: defense_label(r["defense"], r.get("defense_variant"))),
        View(TERMINAL, 0, "defense", lambda r: defense_label(r["defense"], r.get("defense_variant")),
             justify="left", no_wrap=True, style="bold"),
    )),
    Column("defense_variant", pa.string(), lambda f: f.joined("defense_variant")),
    Column("defense_seeding", pa.string(), lambda f: f.joined("defense_seeding")),  # per-seed | shared | both
    Column("harmful_task", pa.string(), lambda f: f.tasks.get("harmful")),
    # worst case over attacks, mean over budgets
    Column("harmful_accuracy_mean", pa.float64(), lambda f: _mean(m for _, m in f.curve), (
        View(BOARD, 40, "harmful acc (mean over budgets)", lambda r: fmt_number(r["harmful_accuracy_mean"])),
    )),
    # always answering the test pool's most frequent class (`harness.report.majority`); null: the runs cannot tell
    Column("harmful_majority_accuracy", pa.float64(), lambda f: f.majority.get(f.tasks.get("harmful"))),
    # vs random-init, paired by seed, mean over budgets (descriptive)
    Column("harmful_gap", pa.float64(), lambda f: _mean(f.gaps), (
        View(BOARD, 30, "mean gap over budgets [95% CI]", gap_text),
    )),
    Column("harmful_gap_ci95_low", pa.float64(), lambda f: f.gap_ci[0] if f.gap_ci else None),
    Column("harmful_gap_ci95_high", pa.float64(), lambda f: f.gap_ci[1] if f.gap_ci else None),
    Column("n_paired_seeds", pa.int64(), lambda f: len(f.gaps)),  # paired with random-init at every budget
    Column("worst_budget", pa.int64(), lambda f: f.worst_budget),  # the budget that decides the verdict
    # vs random-init at worst_budget, paired by seed
    Column("worst_budget_gap", pa.float64(), lambda f: _of(f.worst_gap, "mean"), (
        View(BOARD, 20, f"worst-budget gap vs {REFERENCE_DEFENSE} [95% CI]", worst_gap_text),
        View(TERMINAL, 30, f"worst-budget gap\nvs {REFERENCE_DEFENSE}", lambda r: worst_gap_text(r, compact=True)),
    )),
    Column("worst_budget_gap_ci95_low", pa.float64(), lambda f: _of(f.worst_gap, "ci95_low")),
    Column("worst_budget_gap_ci95_high", pa.float64(), lambda f: _of(f.worst_gap, "ci95_high")),
    Column("worst_budget_n_pairs", pa.int64(), lambda f: _of(f.worst_gap, "n")),
    # fewest seeds paired with random-init at any budget
    Column("min_paired_seeds", pa.int64(), lambda f: min((g.n for g in f.budget_gaps.values()), default=0)),
    Column("budget_verdicts", pa.string(),  # "budget:verdict" per budget, joined by ","
           lambda f: ",".join(f"{b}:{budget_call(g, f.block_margin)}" for b, g in f.budget_gaps.items()) or None),
    Column("block_margin", pa.float64(), lambda f: f.block_margin),
    # blocked | blocked, utility lost | blocked, utility not checked | not blocked | inconclusive |
    # too few seeds | not established (attack budget-limited) | reference | no reference
    Column("verdict", pa.string(), lambda f: f.verdict, (
        View(BOARD, 10, "verdict", lambda r: r["verdict"]),
        View(TERMINAL, 40, "verdict", lambda r: r["verdict"], justify="left", no_wrap=True,
             cell_style=lambda r: VERDICT_STYLES.get(r["verdict"])),
    )),
    Column("desired_task", pa.string(), lambda f: f.tasks.get("desired")),
    # worst-case (validation-best) attack, mean over budgets
    Column("desired_accuracy_mean", pa.float64(), lambda f: _mean(f.desired_means.values())),
    Column("desired_accuracy_max_budget", pa.float64(), lambda f: f.desired_means.get(f.desired_max_budget), (
        View(BOARD, 50, lambda first: f"desired acc @ {first.get('desired_max_budget') or '—'}",
             lambda r: fmt_number(r["desired_accuracy_max_budget"])),
        View(TERMINAL, 50, lambda first: f"desired\n@ {first.get('desired_max_budget') or '—'}",
             lambda r: fmt_number(r["desired_accuracy_max_budget"]), no_wrap=True),
    )),
    Column("desired_majority_accuracy", pa.float64(), lambda f: f.majority.get(f.tasks.get("desired"))),
    Column("max_budget", pa.int64(), lambda f: f.max_budget),  # largest harmful budget (cost beyond: "> max")
    Column("desired_max_budget", pa.int64(), lambda f: f.desired_max_budget),  # of desired_accuracy_max_budget
    Column("utility_margin", pa.float64(), lambda f: f.utility_margin),
    Column("utility_check", pa.string(), lambda f: f.utility, (  # kept | lost | null (no bert or no desired rows)
        View(BOARD, 60, f"desired vs {CONTROL_DEFENSE} (worst budget)", utility_text),
    )),
    Column("utility_budget", pa.int64(), lambda f: f.utility_budget),  # the desired budget losing most vs bert
    # desired accuracy minus bert's at utility_budget (paired mean)
    Column("utility_diff", pa.float64(), lambda f: f.worst_utility.mean),
    Column("utility_diff_ci95_low", pa.float64(), lambda f: f.worst_utility.ci95_low),
    Column("utility_diff_ci95_high", pa.float64(), lambda f: f.worst_utility.ci95_high),
    # 0: no shared seed, unpaired difference of means
    Column("utility_n_pairs", pa.int64(), lambda f: f.worst_utility.n if f.utility_budget is not None else None),
    Column("data_cost_threshold", pa.float64(), lambda f: f.threshold),  # null when none could be defined
    Column("data_cost_threshold_rule", pa.string(), lambda f: f.threshold_rule),  # how it was defined
    # harmful training examples to reach the threshold; null when never
    Column("data_cost", pa.float64(), lambda f: f.cost, (
        View(BOARD, 70, lambda first: f"data cost to {fmt_number(first.get('data_cost_threshold'), 2)}", cost_text),
        View(TERMINAL, 70, lambda first: f"cost to\n{fmt_number(first.get('data_cost_threshold'), 2)}", cost_text,
             no_wrap=True),
    )),
    # interpolated | <=min budget | >max budget | no data | no threshold
    Column("data_cost_flag", pa.string(), lambda f: f.cost_flag),
    Column("validation_rows", pa.int64(), lambda f: f.validation_rows),  # most validation rows selected on
    # training + validation rows; null if rows unknown
    Column("data_cost_with_validation", pa.float64(), lambda f: f.cost_with_validation, (
        View(BOARD, 80, "with validation rows", lambda r: cost_text(r, validation=True)),
    )),
    Column("n_failed_cells", pa.int64(), lambda f: f.n_failed_cells),
    # The attacker's compute (from the runs' curves tables): steps, and examples seen (steps x the selected batch
    # size), until the worst-case mean test curve of the reruns at the largest harmful budget reaches the data-cost
    # threshold; interpolated between checks.
    Column("compute_cost_steps", pa.float64(), lambda f: _at_max(f)[0], (
        View(BOARD, 90, lambda first: f"compute cost to {fmt_number(first.get('data_cost_threshold'), 2)} "
                                      f"@ {first.get('max_budget')}", compute_text),
    )),
    Column("compute_cost_examples", pa.float64(), lambda f: _at_max(f)[1]),
    # interpolated | <=first check | >last check | no curve (no curves written) | no threshold
    Column("compute_cost_flag", pa.string(), lambda f: _at_max(f)[2]),
    Column("compute_cost_by_budget", pa.string(), lambda f: by_budget_text(f.compute)),  # "budget:steps", joined
    # Did the attacker's searches converge? Over the defense's ok harmful cells at the budgets its verdict compares:
    # any still improving, at an edge of the space, or with its found model more than the block margin above its
    # reruns on test (then "blocked" is not established); null: unknown (cells written before the diagnostics).
    Column("search_budget_limited", pa.bool_(), lambda f: f.search_limited),
    Column("search_still_improving_cells", pa.int64(),
           lambda f: _count(f.verdict_cells, "search_still_improving")),
    Column("search_at_edge_cells", pa.int64(), lambda f: _count(f.verdict_cells, "search_at_edge")),
    Column("search_cautions", pa.string(), lambda f: search_caution_text(f.verdict_cells, f.block_margin)),
)


def summary_schema(columns: Iterable[Column] | None = None) -> pa.Schema:
    return pa.schema([c.field for c in (SUMMARY_COLUMNS if columns is None else columns)])


SUMMARY_SCHEMA = summary_schema()


def summary_table(facts: Iterable[DefenseFacts]) -> pa.Table:
    """One summary row per defense, each column computed by its entry."""
    rows = [{c.name: c.compute(f) for c in SUMMARY_COLUMNS} for f in facts]
    return to_table(rows, summary_schema(), "summary")


def shown(fmt: str) -> list[View]:
    """The views of the summary columns shown in format `fmt` (or TERMINAL), in their order."""
    return sorted((v for c in SUMMARY_COLUMNS for v in c.views if v.shown_in(fmt)), key=lambda v: v.order)
