"""Publishing: merge runs, aggregate them and write every file of the leaderboard, each atomically.

The Parquet tables (leaderboard, summary, comparisons, curves), one file per registered output format
(`harness.report.render.FORMATS`: leaderboard.md, leaderboard.html, ...), a PNG per task role attacked and, when the
runs wrote curves, harmful-steps.png (harmful accuracy against attacker steps, per budget).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from harness.atomic import write_file_atomic, write_text_atomic
from harness.errors import UserError
from harness.report import render
from harness.report.aggregate import aggregate
from harness.report.merge import merge_curves, merge_runs
from harness.report.render.plots import plot_compute, plot_role
from harness.report.stats import BLOCK_MARGIN, UTILITY_MARGIN
from harness.report.tables import COMPUTE_PLOT, ROLES, LeaderboardFiles
from harness.results import write_table


def default_out(run_dirs: list[Path]) -> Path:
    return Path(run_dirs[0]) / "leaderboard"


def check_options(threshold: float | None, block_margin: float, utility_margin: float) -> None:
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise UserError(f"threshold {threshold}: an accuracy in (0, 1]")
    for name, value in (("block margin", block_margin), ("utility margin", utility_margin)):
        if not 0.0 <= value < 1.0:
            raise UserError(f"{name} {value}: an accuracy difference in [0, 1)")


def build_leaderboard(
    run_dirs: list[Path],
    out: Path | None = None,
    *,
    threshold: float | None = None,
    block_margin: float = BLOCK_MARGIN,
    utility_margin: float = UTILITY_MARGIN,
) -> LeaderboardFiles:
    """Merge runs and write leaderboard.parquet, summary.parquet, comparisons.parquet, curves.parquet, a file per
    output format (leaderboard.md, leaderboard.html) and the plots. `threshold` None: relative to the reference curves."""
    check_options(threshold, block_margin, utility_margin)
    run_dirs = [Path(r) for r in run_dirs]
    out = Path(out) if out is not None else default_out(run_dirs)
    cells, runs = merge_runs(run_dirs)
    curves = merge_curves(run_dirs, cells)
    tables = replace(aggregate(cells, curves=curves, threshold=threshold, block_margin=block_margin,
                               utility_margin=utility_margin), runs=runs)
    if out.exists() and not out.is_dir():
        raise UserError(f"output '{out}': exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path] = {}
    images: dict[str, bytes] = {}
    for role, draw in [*((r, lambda t, r=r: plot_role(t, r)) for r in ROLES), (COMPUTE_PLOT, plot_compute)]:
        path = out / f"{role}.png"
        png = draw(tables)
        if png is None:
            path.unlink(missing_ok=True)  # a plot left by an earlier build would not match these tables
            continue
        write_file_atomic(path, lambda tmp, data=png: tmp.write_bytes(data))
        plots[role], images[role] = path, png
    return LeaderboardFiles(
        out=out,
        leaderboard=write_table(out / "leaderboard.parquet", tables.leaderboard),
        summary=write_table(out / "summary.parquet", tables.summary),
        comparisons=write_table(out / "comparisons.parquet", tables.comparisons),
        curves=write_table(out / "curves.parquet", tables.curves),
        documents={name: write_text_atomic(out / fmt.filename, fmt.render(tables, images))
                   for name, fmt in render.FORMATS.items()},
        plots=plots,
        cautions=tables.cautions,
    )
