"""One driver per run directory: an exclusive lock that names its holder (pid, host, start time).

The lock is an OS file lock (`flock`, through `filelock`) on `<run_dir>/.sdm.lock`. The kernel drops it when its
process dies, kill -9 included, so the next `sdm run` takes over a dead driver's lock without any manual step. The
holder's identity is written to `<run_dir>/.sdm.lock.json` once the lock is won (never into the lock file itself,
which a contender opens too), so a refused run can say which process to look for; a holder file that is still there
when the lock is won was left by a driver that died, and is reported as a takeover.

On a shared filesystem the lock is as good as the filesystem's `flock`: NFS clients on Linux map it to NFS locks,
which work between hosts; where `flock` is missing, `filelock` falls back to a lock file whose mere existence is the
lock, which a killed driver leaves behind (the refusal names the holder so that a user can check it is gone and
delete the file).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from harness.atomic import write_text_atomic
from harness.errors import UserError

LOCK_FILE = ".sdm.lock"
HOLDER_FILE = ".sdm.lock.json"


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    started: str
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}, started {self.started} ({self.command})"

    @classmethod
    def me(cls) -> "Holder":
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "python"
        return cls(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%dT%H:%M:%S%z"), command[:200])


def read_holder(run_dir: Path) -> Holder | None:
    try:
        return Holder(**json.loads((Path(run_dir) / HOLDER_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None  # no holder file, or one being written or damaged: nothing reliable to name


class RunLock:
    """`with RunLock(run_dir) as lock:` holds the run directory; `lock.previous` is a dead holder taken over, if any.

    A run directory that the lock itself created and that is still empty on release is removed again, so a run
    refused after taking the lock (bad input found late) leaves nothing behind.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.previous: Holder | None = None
        self._lock = FileLock(str(self.run_dir / LOCK_FILE), timeout=0)
        self._created: list[Path] = []  # folders the lock created, innermost first

    def __enter__(self) -> "RunLock":
        self._created = [p for p in [self.run_dir, *self.run_dir.parents] if not p.exists()]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            holder = read_holder(self.run_dir)
            who = holder.describe() if holder else "a process that has not written its details yet"
            raise UserError(
                f"output '{self.run_dir}': another sdm run is using it: {who}; wait for it to finish or stop it "
                f"(lock file {self.run_dir / LOCK_FILE})"
            ) from None
        self.previous = read_holder(self.run_dir)
        write_text_atomic(self.run_dir / HOLDER_FILE, json.dumps(asdict(Holder.me())))
        return self

    def __exit__(self, *exc_info: object) -> None:
        (self.run_dir / HOLDER_FILE).unlink(missing_ok=True)
        if self._created and {p.name for p in self.run_dir.iterdir()} <= {LOCK_FILE}:
            (self.run_dir / LOCK_FILE).unlink(missing_ok=True)
            self._lock.release()
            for folder in self._created:
                if any(folder.iterdir()):
                    break
                folder.rmdir()
            return
        self._lock.release()
