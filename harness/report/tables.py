"""The leaderboard's published tables: their schemas and the in-memory and on-disk bundles.

Kept apart from the aggregation (`harness.leaderboard`) and the renderers (`harness.report.render`) so both can
import them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from harness.config import REFERENCE_DEFENSE

CONTROL_DEFENSE = "bert"  # trained like the censoring defenses with the censoring off: the utility yardstick
BASELINES = (REFERENCE_DEFENSE, CONTROL_DEFENSE)  # listed first, in this order; other defenses follow alphabetically
WORST_CASE = "worst-case"
ROLES = ("harmful", "desired")
PROVENANCE_SUMMARY = ("package_version", "git_commit", "model_id", "data_fingerprint", "config_hash", "selection")

LEADERBOARD_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int32()),
        pa.field("defense", pa.string()),
        pa.field("defense_variant", pa.string()),  # e.g. first-order; distinct values joined by ","; null if none
        pa.field("attack", pa.string()),  # an attack's name, or "worst-case" (validation-best attack per seed)
        pa.field("task", pa.string()),
        pa.field("task_role", pa.string()),  # harmful | desired
        pa.field("budget", pa.int64()),
        pa.field("status", pa.string()),  # ok | failed (no seed gave a result) | incomplete (worst case only)
        pa.field("n_attacks", pa.int64()),
        pa.field("n_seeds", pa.int64()),  # seeds aggregated
        pa.field("seeds", pa.string()),
        pa.field("selected_attacks", pa.string()),  # worst case only: "seed:attack" chosen on validation, per seed
        pa.field("n_failed_cells", pa.int64()),
        pa.field("test_accuracy_mean", pa.float64()),
        pa.field("test_accuracy_std", pa.float64()),  # sample std over seeds; null with one seed
        pa.field("ci95_low", pa.float64()),  # Student t-interval over seeds; null with one seed
        pa.field("ci95_high", pa.float64()),
        pa.field("single_seed", pa.bool_()),
        pa.field("bootstrap_ci95_low", pa.float64()),  # percentile bootstrap; null below BOOTSTRAP_MIN_SEEDS seeds
        pa.field("bootstrap_ci95_high", pa.float64()),
        *[pa.field(name, pa.string()) for name in PROVENANCE_SUMMARY],  # distinct values, sorted, joined by ","
    ]
)

SUMMARY_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int32()),
        pa.field("defense", pa.string()),
        pa.field("defense_variant", pa.string()),
        pa.field("defense_seeding", pa.string()),  # per-seed | shared | both joined by ","; null in older cells
        pa.field("harmful_task", pa.string()),
        pa.field("harmful_accuracy_mean", pa.float64()),  # worst case over attacks, mean over budgets
        pa.field("harmful_gap", pa.float64()),  # vs random-init, paired by seed, mean over budgets (descriptive)
        pa.field("harmful_gap_ci95_low", pa.float64()),
        pa.field("harmful_gap_ci95_high", pa.float64()),
        pa.field("n_paired_seeds", pa.int64()),  # seeds of harmful_gap: paired with random-init at every budget
        pa.field("worst_budget", pa.int64()),  # the budget that decides the verdict
        pa.field("worst_budget_gap", pa.float64()),  # vs random-init at worst_budget, paired by seed
        pa.field("worst_budget_gap_ci95_low", pa.float64()),
        pa.field("worst_budget_gap_ci95_high", pa.float64()),
        pa.field("worst_budget_n_pairs", pa.int64()),
        pa.field("min_paired_seeds", pa.int64()),  # fewest seeds paired with random-init at any budget
        pa.field("budget_verdicts", pa.string()),  # "budget:verdict" per budget, joined by ","
        pa.field("block_margin", pa.float64()),
        # blocked | blocked, utility lost | blocked, utility not checked | not blocked | inconclusive |
        # too few seeds | reference | no reference
        pa.field("verdict", pa.string()),
        pa.field("desired_task", pa.string()),
        pa.field("desired_accuracy_mean", pa.float64()),  # worst-case (validation-best) attack, mean over budgets
        pa.field("desired_accuracy_max_budget", pa.float64()),
        pa.field("max_budget", pa.int64()),  # largest harmful budget (data cost beyond it is "> max_budget")
        pa.field("desired_max_budget", pa.int64()),  # the budget of desired_accuracy_max_budget
        pa.field("utility_margin", pa.float64()),
        pa.field("utility_check", pa.string()),  # kept | lost | null (no bert or no desired rows)
        pa.field("utility_budget", pa.int64()),  # the desired budget with the largest loss vs bert
        pa.field("utility_diff", pa.float64()),  # desired accuracy minus bert's at utility_budget (paired mean)
        pa.field("utility_diff_ci95_low", pa.float64()),
        pa.field("utility_diff_ci95_high", pa.float64()),
        pa.field("utility_n_pairs", pa.int64()),  # 0: no shared seed, unpaired difference of means
        pa.field("data_cost_threshold", pa.float64()),  # null when no threshold could be defined
        pa.field("data_cost_threshold_rule", pa.string()),  # how the threshold was defined
        pa.field("data_cost", pa.float64()),  # harmful training examples to reach the threshold; null when never
        pa.field("data_cost_flag", pa.string()),  # interpolated | <=min budget | >max budget | no data | no threshold
        pa.field("validation_rows", pa.int64()),  # most labelled validation rows the attacker selected on
        pa.field("data_cost_with_validation", pa.float64()),  # training + validation rows; null if rows unknown
        pa.field("n_failed_cells", pa.int64()),
    ]
)

COMPARISON_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int32()),
        pa.field("defense", pa.string()),
        pa.field("versus", pa.string()),
        pa.field("task", pa.string()),
        pa.field("task_role", pa.string()),
        pa.field("budget", pa.int64()),
        pa.field("n_pairs", pa.int64()),  # seeds both have (worst case over attacks)
        pa.field("mean_diff", pa.float64()),  # defense - versus, mean over paired seeds
        pa.field("ci95_low", pa.float64()),  # t-interval over the paired differences; null below two pairs
        pa.field("ci95_high", pa.float64()),
    ]
)


@dataclass(frozen=True)
class LeaderboardTables:
    leaderboard: pa.Table
    summary: pa.Table
    comparisons: pa.Table | None = None
    runs: tuple[str, ...] = ()
    provenance: dict[str, str] = field(default_factory=dict)
    cautions: tuple[str, ...] = ()  # what a reader must know before trusting a row, e.g. mixed defense weights


@dataclass(frozen=True)
class LeaderboardFiles:
    out: Path
    leaderboard: Path
    summary: Path
    comparisons: Path
    markdown: Path
    html: Path
    plots: dict[str, Path]  # task role -> PNG
    cautions: tuple[str, ...] = ()

    def read(self) -> LeaderboardTables:
        return LeaderboardTables(pq.read_table(self.leaderboard), pq.read_table(self.summary),
                                 pq.read_table(self.comparisons), cautions=self.cautions)

    def paths(self) -> dict[str, Path]:
        return {"leaderboard": self.leaderboard, "summary": self.summary, "comparisons": self.comparisons,
                "markdown": self.markdown, "html": self.html,
                **{f"plot ({role})": path for role, path in self.plots.items()}}


def defense_label(defense: str, variant: str | None) -> str:
    """How a defense is named wherever its rows appear: a variant (a different method, e.g. first-order MLAC) is
    shown next to the name, so it is never read as the original method."""
    return f"{defense} [{variant}]" if variant else defense


def defense_labels(summary: pa.Table) -> dict[str, str]:
    """Defense -> its displayed label, from a summary table."""
    return {r["defense"]: defense_label(r["defense"], r.get("defense_variant"))
            for r in summary.select([c for c in ("defense", "defense_variant") if c in summary.column_names])
            .to_pylist()}
