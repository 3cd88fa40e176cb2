"""Shared fixtures: an isolated defense cache, and quiet local Ray."""

from __future__ import annotations

import os
import sys
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
