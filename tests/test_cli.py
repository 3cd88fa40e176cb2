"""Command-line usage errors: exit status 2 and one line on stderr naming the problem, never a traceback."""

from __future__ import annotations

import subprocess

import pytest

from harness import __version__
from tests.conftest import ROOT, SMOKE, sdm_command

USAGE_ERRORS = {
    "unknown option": (["run", str(SMOKE), "--outt", "x"], "No such option: --outt"),
    "missing config": (["run"], "Missing argument 'config'"),
    "unknown command": (["runn"], "No such command 'runn'"),
    "bad option value": (["leaderboard", str(ROOT / "results" / "reproduce"), "--threshold", "abc"],
                         "Invalid value for '--threshold'"),
    "extra argument": (["plugins", "extra"], "unexpected extra argument"),
    "unknown subcommand": (["data", "inspectt", str(SMOKE)], "No such command 'inspectt'"),
}


def sdm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*sdm_command(), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.mark.parametrize("case", USAGE_ERRORS, ids=list(USAGE_ERRORS))
def test_usage_error_is_one_line_with_exit_status_2(case: str) -> None:
    args, expected = USAGE_ERRORS[case]
    result = sdm(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and expected in lines[0] and "--help" in lines[0]
    assert result.stdout == ""


def test_version() -> None:
    result = sdm("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"sdm-bench {__version__}"


def test_bare_command_prints_help() -> None:
    result = sdm()
    assert result.returncode == 0 and "run" in result.stdout and "Traceback" not in result.stderr
