"""Provenance: what produced a row (package version, git commit, libraries, machine), recorded on every row."""

from __future__ import annotations

import os
import platform
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


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"cpu {platform.machine()} x{os.cpu_count()}"


def provenance(**fields: Any) -> Provenance:
    """The run-wide provenance; callers pass the experiment-specific fields."""
    import ray
    import torch

    from harness import __version__

    return Provenance(
        package_version=__version__,
        git_commit=git_commit(),
        ray_version=ray.__version__,
        torch_version=torch.__version__,
        hardware=hardware(),
        **fields,
    )
