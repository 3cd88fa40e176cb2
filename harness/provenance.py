"""Provenance: what produced a row (package version, git commit, libraries, machine), recorded on every row."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from harness.results import Provenance


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def provenance(**fields: Any) -> Provenance:
    """The run-wide provenance; callers pass the experiment-specific fields. Its hardware is this process's CPU: the
    driver computes nothing on a GPU, and rows of trials record what their workers ran on (`Provenance.ran_on`)."""
    import ray
    import torch

    from harness import __version__
    from harness.device import hardware

    return Provenance(
        package_version=__version__,
        git_commit=git_commit(),
        ray_version=ray.__version__,
        torch_version=torch.__version__,
        hardware=hardware(),
        **fields,
    )
