"""The leaderboard's published tables: the leaderboard and comparisons schemas, and the in-memory and on-disk
bundles. The summary's schema is read off its columns (`harness.report.columns.SUMMARY_SCHEMA`).

Kept apart from the aggregation (`harness.report.aggregate`) and the renderers (`harness.report.render`) so both can
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
COMPUTE_PLOT = "harmful-steps"  # the plot of harmful accuracy against attacker steps, per budget
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
        # The attack searches of the group's ok cells (the worst case: of every attack): how many were still
        # improving, how many selected a configuration at an edge of the space, and which edges ("name:low|high",
        # distinct, joined by ","). Null when no cell of the group says (cells written before the diagnostics).
        pa.field("n_still_improving", pa.int64()),
        pa.field("n_at_edge", pa.int64()),
        pa.field("search_edges", pa.string()),
    ]
)

# The attacker's compute curves: per group of the worst case, the mean over seeds of the reruns' test accuracy at each
# attacker step (each seed's curve is the mean over its reruns). Empty when the runs wrote no curves.
CURVES_SCHEMA = pa.schema(
    [
        pa.field("schema_version", pa.int32()),
        pa.field("defense", pa.string()),
        pa.field("task", pa.string()),
        pa.field("task_role", pa.string()),
        pa.field("budget", pa.int64()),
        pa.field("step", pa.int64()),  # attacker training steps
        pa.field("n_seeds", pa.int64()),
        pa.field("test_accuracy_mean", pa.float64()),
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
class CellFiles:
    """Where a cell's files lie, relative to the board's folder (what the HTML page links); None: not there (a
    published folder holds cells tables only)."""

    config: str | None  # the run's run.json: the config the cell was measured with
    trials: str | None  # the cell's trials.parquet: every search trial and rerun


@dataclass(frozen=True)
class LeaderboardTables:
    leaderboard: pa.Table
    summary: pa.Table
    comparisons: pa.Table | None = None
    runs: tuple[str, ...] = ()
    provenance: dict[str, str] = field(default_factory=dict)
    cautions: tuple[str, ...] = ()  # what a reader must know before trusting a row, e.g. mixed defense weights
    curves: pa.Table | None = None  # CURVES_SCHEMA: the worst case's compute curves
    cells: pa.Table | None = None  # the merged cells the tables were aggregated from (the HTML page's drill-down)
    files: dict[str, CellFiles] = field(default_factory=dict)  # cell_id -> its files, for the drill-down's links


@dataclass(frozen=True)
class LeaderboardFiles:
    out: Path
    leaderboard: Path
    summary: Path
    comparisons: Path
    documents: dict[str, Path]  # output format -> file, in registration order ("markdown", "html", ...)
    plots: dict[str, Path]  # task role (or COMPUTE_PLOT) -> PNG (an SVG and a PDF of the same figure beside it)
    cautions: tuple[str, ...] = ()
    curves: Path | None = None  # curves.parquet (CURVES_SCHEMA)

    @property
    def markdown(self) -> Path:
        return self.documents["markdown"]

    @property
    def html(self) -> Path:
        return self.documents["html"]

    def read(self) -> LeaderboardTables:
        return LeaderboardTables(pq.read_table(self.leaderboard), pq.read_table(self.summary),
                                 pq.read_table(self.comparisons), cautions=self.cautions,
                                 curves=pq.read_table(self.curves) if self.curves is not None else None)

    def paths(self) -> dict[str, Path]:
        return {"leaderboard": self.leaderboard, "summary": self.summary, "comparisons": self.comparisons,
                **({"compute curves": self.curves} if self.curves is not None else {}),
                **self.documents, **{f"plot ({role})": path for role, path in self.plots.items()}}


@dataclass(frozen=True)
class ReportFiles:
    """What `sdm report` writes for a paper: the figures in every format, the summary table and the figures' LaTeX."""

    out: Path
    figures: dict[str, dict[str, Path]]  # task role (or COMPUTE_PLOT) -> format (png, svg, pdf) -> file
    table: Path  # summary.tex (booktabs)
    figures_tex: Path  # figures.tex: a figure environment per figure, with its caption

    def paths(self) -> dict[str, Path]:
        return {"table (LaTeX)": self.table, "figures (LaTeX)": self.figures_tex,
                **{f"figure ({role}, {fmt})": path for role, files in self.figures.items()
                   for fmt, path in files.items()}}


def defense_label(defense: str, variant: str | None) -> str:
    """How a defense is named wherever its rows appear: a variant (a different method, e.g. first-order MLAC) is
    shown next to the name, so it is never read as the original method."""
    return f"{defense} [{variant}]" if variant else defense


def defense_labels(summary: pa.Table) -> dict[str, str]:
    """Defense -> its displayed label, from a summary table."""
    return {r["defense"]: defense_label(r["defense"], r.get("defense_variant"))
            for r in summary.select([c for c in ("defense", "defense_variant") if c in summary.column_names])
            .to_pylist()}
