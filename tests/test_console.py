"""A quiet console: a real `sdm run` of the smoke config says what it does and nothing else (no traceback, no
warning, no colour codes off a terminal, no wrapped paths, bars that end at their end), and the pieces that make it
so."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.progress import Progress
from rich.table import Table

from harness.console import TUNE_CONTROLLER_LOGGER, StepBar, TrialsBar, make_console, print_wide, quiet_libraries
from harness.plan import REPLAYS
from tests.conftest import ROOT, SmokeRun

ANSI = re.compile(r"\x1b\[")


@pytest.fixture(scope="module")
def smoke_output(smoke_run: SmokeRun) -> tuple[Path, str]:
    """The shared smoke run (tests/conftest.py): its defenses train, in Ray tasks, into a cache of its own, with the
    console variables the CLI must set itself unset, and a plateau stop after one trial without improvement, so
    searches end while trials still run (the teardown that printed Ray's "Exception ignored ... SystemExit")."""
    return smoke_run.work, smoke_run.stdout + smoke_run.stderr


def test_a_smoke_run_prints_no_traceback_warning_or_colour_code(smoke_output):
    _, text = smoke_output
    assert "Traceback" not in text and "Exception ignored" not in text
    assert "WARNING" not in text, [line for line in text.splitlines() if "WARNING" in line]
    assert not ANSI.search(text)
    assert "Loading weights" not in text  # transformers' bar, in the driver and in the workers
    assert "pid=" not in text  # nothing forwarded from a Ray worker


def test_defense_training_is_reported_by_the_driver_on_one_line_each(smoke_output):
    work, text = smoke_output
    for defense in ("random-init", "bert"):
        [line] = [line for line in text.splitlines() if line.startswith(f"defense {defense} (seed 0): trained")]
        assert line.endswith("encoder.safetensors)") and str(work / "cache") in line  # the path is not wrapped
    # bert trains 20 steps: the driver's bar for it ends at 20 of 20
    assert re.search(r"^defense bert \(seed 0\).* 20/20 ", text, re.MULTILINE), text


def test_the_progress_bars_end_at_their_end(smoke_output):
    _, text = smoke_output
    [cells] = re.findall(r"^cells .* (\d+)/(\d+) ", text, re.MULTILINE)
    [trials] = re.findall(r"^trials .* (\d+)/(\d+) ", text, re.MULTILINE)
    assert cells == ("8", "8")
    most = 8 * (3 + 2 + REPLAYS)  # 8 cells of 3 search trials, 2 reruns and the found model's replay
    assert trials[0] == trials[1] and int(trials[1]) < most  # the plateau stop ran fewer than the most


def test_a_table_off_a_terminal_is_printed_whole(capsys):
    table = Table(title="wide")
    for i in range(8):
        table.add_column(f"a long column header {i}")
    table.add_row(*[f"/a/long/path/to/a/file/number/{i}.parquet" for i in range(8)])
    print_wide(make_console(), table)
    out = capsys.readouterr().out
    assert not ANSI.search(out)
    assert all(f"a long column header {i}" in out for i in range(8))  # no header wrapped or cut
    assert all(f"/a/long/path/to/a/file/number/{i}.parquet" in out for i in range(8))
    assert max(len(line) for line in out.splitlines()) > 200


def test_a_long_line_off_a_terminal_is_not_wrapped(capsys):
    path = "/very/long/" * 20 + "encoder.safetensors"
    make_console(stderr=True).print(f"defense bert (seed 0): trained in 3s ({path})")
    assert f"({path})" in capsys.readouterr().err


def test_step_bar_appears_with_its_first_report_and_ends_at_its_total():
    progress = Progress()
    bar = StepBar(progress, "defense x (seed 0)", 100)
    bar.finish()
    assert progress.tasks == []  # a cached or zero-step training shows no bar
    bar(37, {"loss": 0.5})
    [task] = progress.tasks
    assert task.completed == 37 and task.description == "defense x (seed 0) loss 0.5"
    bar.finish()
    assert task.completed == task.total == 100


def test_trials_bar_total_shrinks_by_the_trials_a_cell_did_not_use():
    progress = Progress()
    bar = TrialsBar(progress, 3 * 10)
    for used in (10, 4, 7):
        bar.start("cell")
        for ended in range(1, used + 1):
            bar.advance("cell", ended)
        bar.end("cell", used, 10)
    [task] = progress.tasks
    assert task.completed == task.total == 21


def test_trials_bar_counts_the_trials_of_cells_in_flight_together():
    progress = Progress()
    bar = TrialsBar(progress, 2 * 10)
    bar.start("a")
    bar.start("b")
    [task] = progress.tasks
    assert task.description == "trials (2 cells at once)"
    bar.advance("a", 3)
    bar.advance("b", 2)
    bar.advance("a", 3)  # the same count reported again moves nothing
    bar.end("a", 6, 10)  # reports are throttled: the end brings the last count
    assert task.description == "trials b"
    bar.advance("a", 6)  # a report of a's that arrives after its end is stale
    assert task.completed == 8
    bar.end("b", 10, 10)
    assert task.completed == task.total == 16


def python(script: str) -> subprocess.CompletedProcess:
    """Run `script` in a fresh interpreter that imports this checkout."""
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_worker_told_to_stop_inside_a_gc_callback_exits_quietly():
    """Ray's SIGTERM handler raises SystemExit wherever the worker's main thread is; inside a garbage-collection
    callback Python cannot raise it, prints "Exception ignored ... SystemExit" and carries on."""
    script = (
        "import gc, sys\n"
        "from harness.console import quiet_worker\n"
        "quiet_worker()\n"
        "class Dying:\n"
        "    def __del__(self):\n"
        "        raise SystemExit(3)\n"
        "Dying()\n"
        "gc.collect()\n"
        "print('carried on')\n"
    )
    result = python(script)
    assert result.returncode == 3
    assert result.stdout == "" and result.stderr == ""


def test_other_unraisable_errors_are_still_reported():
    script = (
        "from harness.console import quiet_worker\n"
        "quiet_worker()\n"
        "class Broken:\n"
        "    def __del__(self):\n"
        "        raise ValueError('broken finaliser')\n"
        "Broken()\n"
        "print('carried on')\n"
    )
    result = python(script)
    assert result.returncode == 0 and "carried on" in result.stdout and "broken finaliser" in result.stderr


def test_the_cli_logs_each_record_once():
    """One handler for our loggers, none on the root: a library with a handler of its own prints once."""
    script = (
        "import logging, sys\n"
        "from harness.console import setup_logging\n"
        "setup_logging()\n"
        "lib = logging.getLogger('somelib')\n"
        "lib.addHandler(logging.StreamHandler(sys.stderr))\n"
        "lib.warning('from the library')\n"
        "logging.getLogger('harness.runner').warning('from us')\n"
    )
    result = python(script)
    assert result.stderr.count("from the library") == 1
    assert result.stderr.count("from us") == 1 and "harness.runner: from us" in result.stderr


def test_a_failed_trial_is_one_line_on_the_console():
    """Tune logs a failed trial with its traceback; what reaches the console is the error's first line."""
    quiet_libraries()
    quiet_libraries()  # twice: still one filter
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger(TUNE_CONTROLLER_LOGGER)
    logger.addHandler(handler)
    try:
        try:
            raise RuntimeError("\x1b[36mray::ImplicitFunc.train()\x1b[39m: the actor's node has died.\n\tpid: 7")
        except RuntimeError as error:
            logger.error("Trial task failed for trial %s", "proxy_trial_1", exc_info=error)
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == ("Trial task failed for trial proxy_trial_1: RuntimeError: ray::ImplicitFunc.train(): "
                                 "the actor's node has died.\n")
    assert len(logger.filters) == 1
