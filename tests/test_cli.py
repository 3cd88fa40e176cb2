"""Command-line usage errors: exit status 2 and one line on stderr naming the problem, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from harness import __version__
from tests.conftest import ROOT, SMOKE, sdm_command

USAGE_ERRORS = {
    "unknown option": (["run", str(SMOKE), "--outt", "x"], "No such option: --outt"),
    "missing config": (["run"], "Missing argument 'CONFIG'"),
    "unknown command": (["runn"], "No such command 'runn'"),
    "bad option value": (["leaderboard", str(ROOT / "results" / "reproduce-protocol1"), "--threshold", "abc"],
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


def test_plugins_json_is_one_document_listing_every_plugin() -> None:
    result = sdm("plugins", "--json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert {p["name"] for p in listed["defenses"]} >= {"random-init", "bert", "adversarial", "mlac"}
    assert {p["name"] for p in listed["attacks"]} >= {"finetune", "probe", "top-k", "lora"}
    probe = next(p for p in listed["attacks"] if p["name"] == "probe")
    assert probe["origin"] == "built-in" and probe["target"] == "attacks.probe:Probe" and probe["description"]


def test_compare_json_is_one_document_of_the_groups(tmp_path) -> None:
    cells = ROOT / "results" / "reproduce-protocol1" / "cells.parquet"
    out = tmp_path / "comparison.md"
    result = sdm("compare", str(cells), str(cells), "--json", "--out", str(out))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["n_groups"] == len(document["groups"]) > 0
    assert document["n_within"] == document["n_groups"]  # a result against itself lies inside its own intervals
    group = document["groups"][0]
    assert {"defense", "attack", "task", "budget", "published_mean", "rerun_mean", "within"} <= set(group)
    assert all(g["verdicts_agree"] for g in document["gaps"])
    assert out.read_text().startswith("# Rerun vs published")


def test_help_has_readable_metavars() -> None:
    for command in ([], ["run"], ["leaderboard"], ["compare"], ["plugins"], ["defend"]):
        result = sdm(*command, "--help")
        assert result.returncode == 0, result.stderr
        assert "<bool>" not in result.stdout and "<list[" not in result.stdout, result.stdout
    run_help = sdm("run", "--help").stdout
    assert "--set KEY=VALUE" in run_help and "--out DIR" in run_help and "--dry-run" in run_help
    assert run_help.startswith("Usage: sdm run")


def test_shell_completion_is_on() -> None:
    assert "--install-completion" in sdm("--help").stdout
    # Typer detects the calling shell (sh under make, which it does not support); this switch of Typer's own makes
    # --show-completion take the shell by name instead.
    no_detection = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    script = subprocess.run(
        [*sdm_command(), "--show-completion", "bash"], capture_output=True, text=True, timeout=120, cwd=ROOT,
        env=no_detection,
    )
    assert script.returncode == 0 and "_SDM_COMPLETE" in script.stdout, script.stdout + script.stderr
    env = {**os.environ, "_SDM_COMPLETE": "complete_bash", "COMP_WORDS": "sdm ru", "COMP_CWORD": "1"}
    completed = subprocess.run([*sdm_command()], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert completed.returncode == 0 and completed.stdout.split() == ["run"], completed.stdout + completed.stderr
