"""A third-party plugin package (examples/sdm-plugin-example) installed from its local path: `sdm plugins` lists its
entry points, its own conformance test passes, and a shrunk smoke grid with its defense and attack reaches the
leaderboard. The guides show that package's code verbatim.

The package is installed with `pip install --target` into a temporary folder that only the subprocesses see (through
PYTHONPATH), so the shared environment is never changed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, SMOKE, sdm_command

EXAMPLE = ROOT / "examples" / "sdm-plugin-example"
GUIDES = [ROOT / "docs" / "adding-a-defense.md", ROOT / "docs" / "adding-an-attack.md"]


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a process that has the example package installed."""
    work = tmp_path_factory.mktemp("plugin")
    source = work / "src"
    shutil.copytree(EXAMPLE, source)  # the build writes egg-info and build/ beside the sources: not into the checkout
    target = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(source)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    path = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_sdm_plugins_lists_the_entry_points(plugin_env, tmp_path):
    result = run([*sdm_command(), "plugins"], plugin_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"example-noise\s+Example: desired-task fine-tuning.*\[sdm-plugin-example\]", result.stdout)
    assert re.search(r"example-probe\s+Example: a fresh linear head.*\[sdm-plugin-example\]", result.stdout)
    # Without the package, neither is there: the listing comes from the installed entry points.
    bare = run([*sdm_command(), "plugins"], dict(os.environ), tmp_path)
    assert "example-noise" not in bare.stdout


def test_the_plugins_own_conformance_test_passes(plugin_env, tmp_path):
    tests = EXAMPLE / "tests"
    result = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tests), str(tests)],
                 plugin_env, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout  # the defense's and the attack's


def test_smoke_grid_with_the_plugins_reaches_the_leaderboard(plugin_env, tmp_path):
    out = tmp_path / "run"
    overrides = [
        "defenses=[{name: example-noise, params: {steps: 5}}]",
        "attacks=[{name: example-probe, space: {steps: {type: int, low: 20, high: 60}}}]",
        "budgets=[30]",
        "tasks.attacked=[harmful]",
        "search.num_samples=2",
        "search.reruns=1",
    ]
    args = [*sdm_command(), "run", str(SMOKE), "--out", str(out)]
    for item in overrides:
        args += ["--set", item]
    result = run(args, plugin_env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = pq.read_table(out / "leaderboard" / "leaderboard.parquet").to_pylist()
    ours = [r for r in rows if r["defense"] == "example-noise" and r["attack"] == "example-probe"]
    assert [(r["task"], r["budget"], r["status"]) for r in ours] == [("gender", 30, "ok")]
    assert 0.0 <= ours[0]["test_accuracy_mean"] <= 1.0
    summary = pq.read_table(out / "leaderboard" / "summary.parquet").to_pylist()
    assert "example-noise" in {r["defense"] for r in summary}


def test_the_guides_show_the_tested_files():
    """Each code block marked `<!-- file: PATH -->` in a guide is that file of the checkout, verbatim."""
    shown = 0
    for guide in GUIDES:
        text = guide.read_text()
        for path, block in re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", text, flags=re.S):
            assert (ROOT / path).read_text() == block, f"{guide.name}: the block for {path} differs from the file"
            shown += 1
    assert shown == 5
