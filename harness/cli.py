"""The `sdm` command line. Heavy libraries are imported inside commands so `sdm --help` stays fast."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand

from harness.errors import UserError

# Plain (click-style) help: typer's rich help labels every flag `<bool>` and every repeatable option `<list[str]>`.
app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="sdm-bench: do self-destructing models resist harmful fine-tuning?",
)
data_app = typer.Typer(no_args_is_help=True, help="Inspect the data a config uses.")
app.add_typer(data_app, name="data")


def _show_version(value: bool) -> None:
    if value:
        from harness import __version__

        typer.echo(f"sdm-bench {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """sdm-bench: do self-destructing models resist harmful fine-tuning?"""

class ReadableHelp(TyperCommand):
    """typer labels an argument of many values `<list[Path]>` whatever its metavar: say `<path>...`, as click does."""

    def format_help(self, ctx, formatter) -> None:  # noqa: ANN001 - click's signature
        own = type(formatter)(width=formatter.width, max_width=formatter.width)
        super().format_help(ctx, own)
        formatter.write(re.sub(r"<list\[(\w+)\]>", lambda m: f"<{m.group(1).lower()}>...", own.getvalue()))


ConfigArg = Annotated[Path, typer.Argument(metavar="CONFIG", help="experiment YAML config")]
SetOpt = Annotated[
    Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help="override a config value (repeatable)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout instead of text")]


def print_json(document: object) -> None:
    """The one thing a `--json` command writes to stdout."""
    typer.echo(json.dumps(document, indent=2, default=str))


def _load(config: Path, overrides: list[str] | None, out: Path | None = None):
    from harness.configfile import load_config

    cfg = load_config(config, (overrides or []) + ([f"output={out}"] if out else []))
    return cfg


@app.command()
def run(
    config: ConfigArg,
    out: Annotated[
        Optional[Path], typer.Option(metavar="DIR", help="run directory (default results/runs/<experiment>)")
    ] = None,
    address: Annotated[
        Optional[str], typer.Option(metavar="ADDR", help="Ray cluster address (default: RAY_ADDRESS, else local)")
    ] = None,
    resume: Annotated[bool, typer.Option(help="restore an interrupted cell's search instead of restarting it")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="check the config offline, print the cell plan and a cost estimate, "
                                             "run nothing")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="with --dry-run: the plan as one JSON document")] = False,
    set_: SetOpt = None,
) -> None:
    """Run an experiment: train (or find) defenses, search attacks per cell, write the tables."""
    if as_json and not dry_run:
        raise UserError("--json goes with --dry-run (a run writes its results as tables)")
    if dry_run:
        from harness.dryrun import go_offline

        go_offline()  # before the config's plugins import any hub library
    cfg = _load(config, set_, out)  # before the heavy imports: a broken config is reported in a moment
    for warning in cfg.warnings():
        typer.echo(f"warning: {warning}", err=True)
    if dry_run:
        _dry_run(cfg, str(config), address, as_json)
        return
    from harness.console import make_console, print_wide
    from harness.runner import run_experiment

    console = make_console(stderr=True)
    result = run_experiment(cfg, origin=str(config), address=address, resume=resume, console=console)
    console.print(
        f"[bold]done[/bold] in {result.seconds:.0f}s: {result.cells_run} cells run, {result.cells_skipped} already "
        f"finished, {len(result.failed)} failed"
    )
    console.print("pools (disjoint): " + "; ".join(info.label for info in result.pools.values()))
    seeding = cfg.defense_training.seeding
    console.print(
        "defenses: " + (f"trained per seed (seeds {', '.join(map(str, cfg.seeds))})" if seeding == "per-seed"
                        else "one training (seed 0) shared by every seed")
    )
    from harness.report.publish import build_leaderboard
    from harness.report.render.terminal import render_terminal

    files = build_leaderboard([result.run_dir])
    print_wide(make_console(), render_terminal(files))
    for name, path in {**result.tables, **files.paths()}.items():
        typer.echo(f"{name}: {path}")
    if result.failed:
        # Exit 1, not 2: the input was fine, some cells had no usable trial. A rerun retries just those cells.
        named = ", ".join(result.failed[:5]) + (f" and {len(result.failed) - 5} more" if len(result.failed) > 5 else "")
        typer.echo(
            f"error: {len(result.failed)} cell(s) failed: {named} (errors in the trials table's 'error' column; "
            "run the same command again to retry them)",
            err=True,
        )
        raise typer.Exit(1)


def _dry_run(cfg, origin: str, address: str | None, as_json: bool) -> None:
    from rich.table import Table

    from harness.console import make_console, print_wide
    from harness.dryrun import cell_status, dry_run, summary_lines

    dry = dry_run(cfg, origin, address)
    if as_json:
        print_json(dry.to_json())
        return
    plan = dry.plan
    table = Table(title=f"{cfg.experiment}: {len(plan.cells)} cells, {len(plan.todo)} to run")
    for column in ("cell", "status", "trials (max)"):
        table.add_column(column)
    for cell in plan.cells:
        status = cell_status(plan, cell)
        table.add_row(cell.cell_id, status, "-" if status == "finished" else str(plan.trials_per_cell))
    print_wide(make_console(), table)
    for line in summary_lines(dry, cfg):
        typer.echo(line)


@app.command()
def plugins(as_json: JsonOpt = False) -> None:
    """List registered defenses and attacks with a one-line description."""
    from harness.registry import ATTACKS, DEFENSES

    registries = (DEFENSES, ATTACKS)
    if as_json:
        print_json({f"{r.kind}s": [{"name": name, "description": e.description, "origin": e.origin, "target": e.target}
                                   for name, e in sorted(r.entries().items())] for r in registries})
        return
    for registry in registries:
        typer.echo(f"{registry.kind}s:")
        for name, entry in sorted(registry.entries().items()):
            origin = "" if entry.origin == "built-in" else f" [{entry.origin}]"
            typer.echo(f"  {name:<14} {entry.description}{origin}")


@app.command()
def defend(
    config: ConfigArg,
    defense: Annotated[str, typer.Option(help="name (or label) of a defense in the config")],
    seed: Annotated[
        Optional[int], typer.Option(help="the cell seed whose defense to train (default: the config's first seed)")
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Train (or find in the cache) one defense of a config and print the weights' path."""
    from harness.defend import make_defense, train_defense
    from harness.errors import did_you_mean
    from harness.data.prepare import prepare_data
    from harness.plan import validate_plugins

    cfg = _load(config, set_)
    validate_plugins(cfg, str(config))
    specs = {d.cell_name: d for d in cfg.defenses}
    if defense not in specs:
        raise UserError(f"{config}: no defense '{defense}' in this config{did_you_mean(defense, specs)}")
    prepared = prepare_data(cfg)
    defense_seed = cfg.defense_training.seed_for(cfg.seeds[0] if seed is None else seed)
    from harness.console import StepBar, make_console, make_progress, quiet_libraries

    quiet_libraries()
    with make_progress(make_console(stderr=True)) as progress:
        bar = StepBar(progress, f"defense {defense} (seed {defense_seed})", make_defense(specs[defense], "config")
                      .total_steps())
        weights = train_defense(cfg, specs[defense], prepared.defense_train, prepared.fingerprint, defense_seed,
                                progress=bar)
        bar.finish()
    how = "cached" if weights.cached else f"trained in {weights.train_seconds:.1f}s"
    typer.echo(f"defense {defense} (seed {defense_seed}): {how} (weights fingerprint {weights.fingerprint})", err=True)
    typer.echo(str(weights.path))


@app.command(cls=ReadableHelp)
def leaderboard(
    run_dirs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR", help="run directories to merge")],
    out: Annotated[
        Optional[Path], typer.Option(metavar="DIR", help="output folder (default <first RUN_DIR>/leaderboard)")
    ] = None,
    threshold: Annotated[
        Optional[float],
        typer.Option(help="fixed harmful-task accuracy the data cost is measured to (default: halfway between "
                          "random-init and bert at the largest budget)"),
    ] = None,
    block_margin: Annotated[
        Optional[float], typer.Option(help="gap to random-init a blocked defense stays under at every budget (0.05)")
    ] = None,
    utility_margin: Annotated[
        Optional[float], typer.Option(help="desired-task accuracy a blocked defense may lose against bert (0.05)")
    ] = None,
) -> None:
    """Merge runs into leaderboard tables (Parquet, Markdown, HTML) and plots."""
    from harness.console import make_console, print_wide
    from harness.report.publish import build_leaderboard
    from harness.report.render.terminal import render_terminal
    from harness.report.stats import BLOCK_MARGIN, UTILITY_MARGIN

    files = build_leaderboard(
        run_dirs, out, threshold=threshold,
        block_margin=BLOCK_MARGIN if block_margin is None else block_margin,
        utility_margin=UTILITY_MARGIN if utility_margin is None else utility_margin,
    )
    print_wide(make_console(), render_terminal(files))
    for caution in files.cautions:
        typer.echo(f"caution: {caution}", err=True)
    for name, path in files.paths().items():
        typer.echo(f"{name}: {path}")


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR", help="run directories to merge")],
    out: Annotated[Optional[Path], typer.Option(help="output folder (default <first RUN_DIR>/report)")] = None,
    threshold: Annotated[
        Optional[float], typer.Option(help="fixed harmful-task accuracy for the data cost (default: halfway "
                                           "between random-init and bert at the largest budget)")] = None,
) -> None:
    """For a paper: the figures (PNG, SVG, PDF), the summary as a LaTeX booktabs table, figures.tex."""
    from harness.report.publish import write_report

    for name, path in write_report(run_dirs, out, threshold=threshold).paths().items():
        typer.echo(f"{name}: {path}")


@app.command()
def compare(
    published: Annotated[Path, typer.Argument(metavar="PUBLISHED",
                                              help="published cells: a run directory or a cells .parquet file")],
    rerun: Annotated[Path, typer.Argument(metavar="RERUN",
                                          help="the rerun's cells: a run directory or a cells .parquet file")],
    out: Annotated[
        Optional[Path], typer.Option(metavar="FILE", help="also write the comparison as Markdown to this file")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a rerun against a published result: each group's rerun mean against the published 95% interval."""
    from dataclasses import asdict

    from harness.atomic import write_text_atomic
    from harness.compare import compare as compare_cells
    from harness.compare import load_cells, render_markdown

    if out is not None and not out.resolve().parent.is_dir():
        raise UserError(f"--out '{out}': its folder does not exist")
    result = compare_cells(load_cells(published), load_cells(rerun))
    if not result.groups:
        raise UserError(f"'{published}' and '{rerun}' have no leaderboard group in common")
    text = render_markdown(result, str(published), str(rerun))
    if out is not None:
        write_text_atomic(out, text)
    if as_json:
        print_json({"published": str(published), "rerun": str(rerun), "n_within": result.n_within,
                    "n_groups": len(result.groups), **asdict(result)})
        return
    from rich.markdown import Markdown

    from harness.console import make_console

    make_console().print(Markdown(text))


@data_app.command("inspect")
def data_inspect(config: ConfigArg, set_: SetOpt = None) -> None:
    """Rows per split, label balance, pronouns left after scrubbing, sample texts."""
    from harness.console import make_console, print_wide
    from harness.data.inspect import inspect_corpus, render_inspection

    cfg = _load(config, set_)
    print_wide(make_console(), render_inspection(inspect_corpus(cfg)))


def _click_error_types() -> tuple[type[BaseException], ...]:
    """click's ClickException, and the copy typer >= 0.2x vendors (`typer._click`) and raises instead."""
    import click

    types: list[type[BaseException]] = [click.ClickException]
    vendored = getattr(typer, "_click", None)
    vendored_type = getattr(getattr(vendored, "exceptions", None), "ClickException", None)
    if isinstance(vendored_type, type):
        types.append(vendored_type)
    return tuple(types)


def usage_line(exc: BaseException) -> str:
    """A usage error as one line: what was wrong, and where to read how the command is used."""
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    message = " ".join(message.split())
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "sdm"
    return f"error: {message} (see '{command} --help')"


def interrupted() -> None:
    typer.echo("interrupted (of a run, finished cells are kept, and the same command with --resume continues the "
               "interrupted searches)", err=True)
    sys.exit(130)


def main() -> None:
    from harness.console import quiet_process, setup_logging

    quiet_process()  # before any library that reads its verbosity at import
    setup_logging()
    try:
        # Outside standalone mode click returns a command's `typer.Exit(code)` instead of exiting with it. The program
        # name is fixed so the usage lines and the completion script say `sdm` however it was started.
        code = app(standalone_mode=False, prog_name="sdm")
        if code == 130:  # Typer's answer to Ctrl+C (KeyboardInterrupt), returned outside standalone mode
            interrupted()
        if isinstance(code, int) and code:
            sys.exit(code)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(UserError.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        interrupted()
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except _click_error_types() as exc:  # usage errors: unknown option or command, missing or bad argument
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `sdm` or `sdm data`: the help is the answer
            typer.echo(exc.ctx.get_help() if getattr(exc, "ctx", None) else str(exc))
            sys.exit(0)
        typer.echo(usage_line(exc), err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
