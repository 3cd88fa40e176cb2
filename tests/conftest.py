"""Shared fixtures: an isolated defense cache, quiet local Ray, and one real smoke run that several modules read."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Defense weights trained by the tests go to a temporary cache, never the user's."""
    cache = tmp_path_factory.mktemp("sdm-cache")
    os.environ["SDM_CACHE_DIR"] = str(cache)
    return cache


def sdm_command() -> list[str]:
    """The installed `sdm` console script of this interpreter's environment."""
    return [sys.executable, "-m", "harness.cli"]


# The shared smoke run's settings, beyond the config: a validation check every SMOKE_EVAL_EVERY steps (for the curves),
# and a plateau stop after one trial without improvement, so searches end while trials still run (the teardown that
# once printed Ray's "Exception ignored ... SystemExit").
SMOKE_EVAL_EVERY = 5
SMOKE_RUN_ARGS = ("--set", f"search.eval_every={SMOKE_EVAL_EVERY}", "--set", "search.plateau_patience=1")


@dataclass(frozen=True)
class SmokeRun:
    """A finished `sdm run` of the smoke config: where it wrote, what it printed, and how to run it again."""

    out: Path
    work: Path
    cache: Path
    stdout: str
    stderr: str

    def again(self, *args: str) -> subprocess.CompletedProcess:
        """`sdm run` of the same config into the same folder, with its cache, plus `args`."""
        return subprocess.run([*sdm_command(), "run", str(SMOKE), "--out", str(self.out), *SMOKE_RUN_ARGS, *args],
                              cwd=self.work, env={**os.environ, "SDM_CACHE_DIR": str(self.cache)},
                              capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> SmokeRun:
    """One real smoke run through the CLI, shared by the end-to-end, curves and console tests (each run costs a minute
    or two of CI): both defenses train, in Ray tasks, into a cache of its own, and the console variables the CLI must
    set itself are unset."""
    work = tmp_path_factory.mktemp("smoke-run")
    cache = work / "cache"
    env = {**os.environ, "SDM_CACHE_DIR": str(cache)}
    for name in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS", "RAY_COLOR_PREFIX"):
        env.pop(name, None)
    out = work / "run"
    result = subprocess.run([*sdm_command(), "run", str(SMOKE), "--out", str(out), *SMOKE_RUN_ARGS],
                            cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return SmokeRun(out, work, cache, result.stdout, result.stderr)
