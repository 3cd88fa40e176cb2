"""Atomic writes honour the umask: outputs readable by colleagues on a shared filesystem (0644 files, 0755 folders
under the common umask 022), private under a private umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from harness.atomic import current_umask, publish_dir_atomic, write_text_atomic


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    previous = os.umask(0o022)
    yield set_mask
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                       (0o002, 0o664, 0o775)])
def test_outputs_honour_the_umask(tmp_path: Path, umask, mask: int, file_mode: int, dir_mode: int) -> None:
    umask(mask)
    assert current_umask() == mask
    written = write_text_atomic(tmp_path / "table.md", "x")
    assert mode(written) == file_mode
    folder = publish_dir_atomic(tmp_path / "weights", lambda tmp: (tmp / "w.txt").write_text("w"))
    assert mode(folder) == dir_mode
