"""Publishing: merge runs, aggregate them and write every file of the leaderboard, each atomically.

The Parquet tables (leaderboard, summary, comparisons, curves), one file per registered output format
(`harness.report.render.FORMATS`: leaderboard.md, leaderboard.html, ...), a figure per task role attacked and, when
the runs wrote curves, harmful-steps (harmful accuracy against attacker steps, per budget), each as PNG, SVG and PDF.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from harness.atomic import write_file_atomic, write_text_atomic
from harness.errors import UserError
from harness.report import render
from harness.report.render import latex
from harness.report.aggregate import aggregate
from harness.report.merge import merge_curves, merge_runs
from harness.report.majority import majority_accuracy
from harness.report.render.plots import FIGURE_FORMATS, figure_bytes, figures
from harness.report.stats import BLOCK_MARGIN, UTILITY_MARGIN
from harness.report.tables import COMPUTE_PLOT, ROLES, CellFiles, LeaderboardFiles, LeaderboardTables, ReportFiles
from harness.results import read_cells, trial_partition, write_table


def default_out(run_dirs: list[Path]) -> Path:
    return Path(run_dirs[0]) / "leaderboard"


def check_options(threshold: float | None, block_margin: float, utility_margin: float) -> None:
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise UserError(f"threshold {threshold}: an accuracy in (0, 1]")
    for name, value in (("block margin", block_margin), ("utility margin", utility_margin)):
        if not 0.0 <= value < 1.0:
            raise UserError(f"{name} {value}: an accuracy difference in [0, 1)")


def board_tables(run_dirs: list[Path], *, threshold: float | None = None, block_margin: float = BLOCK_MARGIN,
                 utility_margin: float = UTILITY_MARGIN) -> LeaderboardTables:
    """The runs merged and aggregated, with the majority class of their test pools: everything a board shows."""
    check_options(threshold, block_margin, utility_margin)
    run_dirs = [Path(r) for r in run_dirs]
    cells, runs = merge_runs(run_dirs)
    curves, curve_cautions = merge_curves(run_dirs, cells)
    tables = aggregate(cells, curves=curves, threshold=threshold, block_margin=block_margin,
                       utility_margin=utility_margin, majority=majority_accuracy(run_dirs, cells))
    return replace(tables, runs=runs, cautions=tables.cautions + curve_cautions)


def cell_files(run_dirs: list[Path], out: Path) -> dict[str, CellFiles]:
    """cell_id -> its run's config (run.json) and its trials file, relative to `out`, where they exist."""
    from harness.runner import RUN_FILE

    def href(path: Path) -> str | None:
        return Path(os.path.relpath(path.resolve(), out.resolve())).as_posix() if path.is_file() else None

    files = {}
    for run in run_dirs:
        config = href(run / RUN_FILE)
        for row in read_cells(run).to_pylist():
            files[row["cell_id"]] = CellFiles(config, href(trial_partition(run, row)))
    return files


def write_figures(tables: LeaderboardTables, out: Path) -> tuple[dict[str, dict[str, Path]], dict[str, bytes]]:
    """Every figure as PNG, SVG and PDF in `out`: role -> format -> file, and the PNG bytes by role. A figure these
    tables do not have is removed, so one left by an earlier build never sits beside tables it does not match."""
    drawn = figures(tables)
    paths: dict[str, dict[str, Path]] = {}
    images: dict[str, bytes] = {}
    for role in (*ROLES, COMPUTE_PLOT):
        for fmt in FIGURE_FORMATS:
            path = out / f"{role}.{fmt}"
            if role not in drawn:
                path.unlink(missing_ok=True)
                continue
            data = figure_bytes(drawn[role], fmt)
            write_file_atomic(path, lambda tmp, data=data: tmp.write_bytes(data))
            paths.setdefault(role, {})[fmt] = path
            if fmt == "png":
                images[role] = data
    return paths, images


def output_dir(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise UserError(f"output '{out}': exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_report(run_dirs: list[Path], out: Path | None = None, *, threshold: float | None = None,
                 block_margin: float = BLOCK_MARGIN, utility_margin: float = UTILITY_MARGIN) -> ReportFiles:
    """`sdm report`: the board's figures (PNG, SVG, PDF), its summary as a booktabs table (summary.tex) and a
    figure environment per figure (figures.tex), for a paper. Default `out`: <first run>/report."""
    tables = board_tables(run_dirs, threshold=threshold, block_margin=block_margin, utility_margin=utility_margin)
    out = output_dir(Path(out) if out is not None else Path(run_dirs[0]) / "report")
    written, _ = write_figures(tables, out)
    return ReportFiles(
        out=out, figures=written,
        table=write_text_atomic(out / latex.FORMAT.filename, latex.render_latex(tables)),
        figures_tex=write_text_atomic(out / "figures.tex", latex.render_figures_latex(tables, list(written))),
    )


def build_leaderboard(
    run_dirs: list[Path],
    out: Path | None = None,
    *,
    threshold: float | None = None,
    block_margin: float = BLOCK_MARGIN,
    utility_margin: float = UTILITY_MARGIN,
) -> LeaderboardFiles:
    """Merge runs and write leaderboard.parquet, summary.parquet, comparisons.parquet, curves.parquet, a file per
    output format (leaderboard.md, leaderboard.html) and the figures. `threshold` None: relative to the reference
    curves."""
    tables = board_tables(run_dirs, threshold=threshold, block_margin=block_margin, utility_margin=utility_margin)
    out = Path(out) if out is not None else default_out([Path(r) for r in run_dirs])
    output_dir(out)
    tables = replace(tables, files=cell_files([Path(r) for r in run_dirs], out))
    written, images = write_figures(tables, out)
    return LeaderboardFiles(
        out=out,
        leaderboard=write_table(out / "leaderboard.parquet", tables.leaderboard),
        summary=write_table(out / "summary.parquet", tables.summary),
        comparisons=write_table(out / "comparisons.parquet", tables.comparisons),
        curves=write_table(out / "curves.parquet", tables.curves),
        documents={name: write_text_atomic(out / fmt.filename, fmt.render(tables, images))
                   for name, fmt in render.FORMATS.items()},
        plots={role: files["png"] for role, files in written.items()},
        cautions=tables.cautions,
    )
