"""Atomic writes: a temporary file (or folder) beside the target, then one rename, so a kill never leaves half a file."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

TMP_MARK = ".tmp-"


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (os.umask can only set it, and setting it
    for a moment races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _honour_umask(path: Path, mode: int) -> None:
    # mkstemp and mkdtemp create 0600 files and 0700 folders whatever the umask: a leaderboard on a shared
    # filesystem or behind a web server would be unreadable to everyone else. Give them what open() and mkdir() give.
    os.chmod(path, mode & ~current_umask())


def write_file_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` and rename the result onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_MARK}{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        _honour_umask(Path(tmp), 0o666)
        write(Path(tmp))
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())  # on disk before the rename: a node that crashes leaves old or new, not empty
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_file_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def publish_dir_atomic(path: Path, fill: Callable[[Path], None]) -> Path:
    """Fill a temporary folder and rename it onto `path` (which must not exist yet)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_MARK}{path.name}.", dir=path.parent))
    try:
        _honour_umask(tmp, 0o777)
        fill(tmp)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def clean_leftovers(root: Path) -> int:
    """Remove temporary files a killed writer left under `root`; returns how many."""
    removed = 0
    if not Path(root).exists():
        return 0
    for leftover in Path(root).rglob(f"{TMP_MARK}*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed += 1
    return removed
