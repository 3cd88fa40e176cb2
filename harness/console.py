"""What a user reads: one logging handler for our own loggers, third-party libraries quiet at their source (in the
driver and in every Ray worker), and rich consoles that neither colour nor wrap when the output is not a terminal.

Light on purpose (no Ray, torch or transformers): the CLI calls `quiet_process` before anything heavy is imported,
because transformers, huggingface_hub and datasets read their verbosity and progress-bar settings at import.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.progress import Progress

# Read by the libraries at import, and inherited by the workers of a local Ray instance. On a cluster the workers'
# environment is the node's, so `quiet_worker` sets the same in each worker process.
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # the hub's download bars and transformers' "Loading weights" bar
    "HF_HUB_VERBOSITY": "error",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DATASETS_VERBOSITY": "error",
    "RAY_AIR_NEW_OUTPUT": "0",  # Tune's console reporter, which `verbose=0` then silences
    # Tune warns when one of its own bookkeeping steps takes over 0.5 s, as it does on any busy laptop: nothing a
    # user can act on. A stall of half a minute is still reported.
    "TUNE_WARN_THRESHOLD_S": "30",
}
# Packages whose loggers get our handler; a library keeps its own (huggingface_hub, transformers and Ray each attach
# one), so no record is printed twice.
OUR_LOGGERS = ("harness", "defenses", "attacks")
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
# Tune warns "Failed to fetch metrics" for every trial with no result files: a trial the plateau stop or ASHA ended
# before its first validation check. The runner records such a trial itself (status `stopped`), so the warning says
# nothing a user can act on.
TUNE_RESULTS_LOGGER = "ray.tune.analysis.experiment_analysis"
PLAIN_WIDTH = 160  # columns of a console that is not a terminal
# Tune logs a failed trial with its whole traceback (a worker lost with its node: three screens). The trials table
# keeps the error; the console gets one line.
TUNE_CONTROLLER_LOGGER = "ray.tune.execution.tune_controller"
ANSI_CODE = re.compile(r"\x1b\[[0-9;]*m")


class OneLineErrors(logging.Filter):
    """Turns a record's traceback into its exception's first line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            first = ANSI_CODE.sub("", (str(error).strip().splitlines() or [""])[0])  # Ray colours its task names
            record.msg, record.args = f"{record.getMessage()}: {type(error).__name__}: {first}", None
            record.exc_info = record.exc_text = None
        return True


def quiet_process() -> None:
    """Set the quiet environment in this process (never overriding a user's own setting), before the libraries are
    imported. Ray colours the worker lines it forwards only when stdout and stderr are both terminals."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


def tune_environment() -> dict[str, str]:
    """This process's settings of Ray Tune, and the quiet ones, for every worker of the run: Tune's controllers run
    in the cell searchers, and a Ray cluster the driver joined, rather than started, has its own environment."""
    return {**QUIET_ENV, **{k: v for k, v in os.environ.items() if k.startswith(("TUNE_", "RAY_AIR_"))}}


def quiet_libraries() -> None:
    """The verbosity of the libraries this process has already imported (the environment covers the others)."""
    logging.getLogger(TUNE_RESULTS_LOGGER).setLevel(logging.ERROR)
    controller = logging.getLogger(TUNE_CONTROLLER_LOGGER)
    if not any(isinstance(f, OneLineErrors) for f in controller.filters):
        controller.addFilter(OneLineErrors())
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars, logging as hub_logging

        hub_logging.set_verbosity_error()
        disable_progress_bars()


def quiet_worker() -> None:
    """Ray's `worker_process_setup_hook`: run once in every worker process, on every node, before its first task."""
    quiet_process()
    quiet_libraries()
    sys.unraisablehook = exit_on_unraisable_exit


def exit_on_unraisable_exit(unraisable: Any) -> None:
    """A worker told to stop (Ray's SIGTERM handler raises SystemExit) while it runs a garbage-collection callback
    cannot raise there: Python prints "Exception ignored in ... SystemExit" and carries on until Ray kills it. Exit
    then, quietly, as the signal asked; any other unraisable exception is reported as usual."""
    if isinstance(unraisable.exc_value, SystemExit):
        code = unraisable.exc_value.code
        os._exit(code if isinstance(code, int) else 1)
    sys.__unraisablehook__(unraisable)


def setup_logging(level: int = logging.WARNING) -> None:
    """One handler, on our own packages' loggers only (not the root: libraries with a handler of their own would
    print each record twice)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    for name in OUR_LOGGERS:
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(level)
            logger.propagate = False


def make_console(*, stderr: bool = False) -> Console:
    """A rich console. On a terminal, rich's own behaviour; otherwise (a file, a pipe, CI) no colour or cursor codes
    and no wrapping: a path in a log line stays on one line, where a reader can copy it."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    # A fixed width, wider than rich's default of 80, so a progress line keeps its bar and its elapsed time.
    return Console(stderr=stderr, soft_wrap=True, no_color=True, highlight=False, color_system=None,
                   width=PLAIN_WIDTH)


def print_wide(console: Console, renderable: RenderableType) -> None:
    """Print a table whole: on a terminal at its width (rich fits it); elsewhere at the table's natural width, never
    cut to rich's default of 80 columns."""
    if not console.is_terminal:
        wide = console.options.update_width(10_000)  # measured unconstrained (rich clamps to the console's width)
        console.width = max(console.width, console.measure(renderable, options=wide).maximum)
    console.print(renderable, soft_wrap=False)


def make_progress(console: Console) -> Progress:
    """The progress display of a long command: one line per bar (what, bar, done of total, time so far)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)


class StepBar:
    """A bar on the driver's progress display for one training, moved by `(step, metrics)` calls (a defense's
    `DefenseContext.progress`). It appears with the first report, so a cached or zero-step training shows none."""

    def __init__(self, progress: Progress, description: str, total: int):
        self.progress = progress
        self.description = description
        self.total = total or None  # 0: the plugin does not know its steps
        self.task: Any = None
        self.step = 0

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        shown = " ".join([self.description, *(f"{k} {v:.4g}" for k, v in metrics.items())])
        if self.task is None:
            self.task = self.progress.add_task(shown, total=self.total)
        self.step = step
        self.progress.update(self.task, completed=step, description=shown)

    def finish(self) -> None:
        """The training ended: the bar stands at its end (its last report may have come a few steps before)."""
        if self.task is not None:
            done = max(self.total or 0, self.step)
            self.progress.update(self.task, total=done, completed=done)


class TrialsBar:
    """The trials bar over every cell in flight; a cell's share of the end moves in when it used fewer than its most."""

    def __init__(self, progress: Progress, total: int):
        self.progress = progress
        self.total = total
        self.task = progress.add_task("trials", total=total)
        self.in_cell: dict[str, int] = {}  # cells in flight -> their trials ended so far

    def start(self, cell_id: str) -> None:
        self.in_cell[cell_id] = 0
        self._describe()

    def advance(self, cell_id: str, ended: int) -> None:
        """`ended` of the cell's trials have ended (a count, not an increment); a late report of a cell that has
        ended already moves nothing."""
        if cell_id not in self.in_cell:
            return
        step = max(0, ended - self.in_cell[cell_id])
        self.in_cell[cell_id] += step
        self.progress.advance(self.task, step)

    def end(self, cell_id: str, used: int, most: int) -> None:
        self.advance(cell_id, used)
        self.in_cell.pop(cell_id, None)
        self.total -= max(0, most - used)
        self.progress.update(self.task, total=self.total)
        self._describe()

    def _describe(self) -> None:
        flying = list(self.in_cell)
        what = f" {flying[0]}" if len(flying) == 1 else f" ({len(flying)} cells at once)" if flying else ""
        self.progress.update(self.task, description=f"trials{what}")
