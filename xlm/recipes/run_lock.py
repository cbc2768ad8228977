"""One writer per run dir: `<run dir>/run.lock`, locked exclusively (flock) for the whole run.

The kernel releases a flock when its holder exits, kill -9 included, so the lock is held exactly as
long as the run lives and no pid has to be guessed stale before it is taken over. The file names
its holder (pid, host, since when) for the message a second run gets, and is emptied on a clean
release: a name found in a lock that nobody holds was left by a run that died, which is said when
the lock is taken over. Under torchrun rank 0 holds it for all ranks.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from xlm.errors import XlmUserError

from .distributed import DistEnv, broadcast_flag

LOCK_FILE = "run.lock"


class RunDirLockedError(XlmUserError, RuntimeError):
    """A run dir that another training run is writing, or whose lock file cannot be used."""


class LockHolder(TypedDict):
    pid: int
    host: str
    since: str


def _read_holder(path: Path) -> LockHolder | None:
    """The holder named in the lock file; None when it is empty or not a holder record."""
    try:
        record = json.loads(path.read_bytes() or b"null")
    except (OSError, ValueError):
        return None
    if not (isinstance(record, dict) and isinstance(record.get("pid"), int) and isinstance(record.get("host"), str)
            and isinstance(record.get("since"), str)):
        return None
    return LockHolder(pid=record["pid"], host=record["host"], since=record["since"])


def _is_running(holder: LockHolder) -> bool | None:
    """Whether the holder's process runs; None when it is on another host (not ours to ask)."""
    if holder["host"] != socket.gethostname():
        return None
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _describe(holder: LockHolder) -> str:
    return f"pid {holder['pid']} on host {holder['host']} since {holder['since']}"


def live_holder(output_dir: Path) -> str | None:
    """The training process named in the run dir's lock when it still runs on this host, as the messages say
    it; None otherwise. Reads the record only: a reader never takes the lock a starting run needs."""
    holder = _read_holder(output_dir / LOCK_FILE)
    return _describe(holder) if holder is not None and _is_running(holder) else None


def _holder_of_busy_lock(path: Path) -> str:
    """Who holds the lock, as the message will say it. The winner writes its name just after taking
    the lock, so a record that is missing or names a dead process is read again for a moment."""
    holder = None
    for _ in range(20):
        holder = _read_holder(path)
        if holder is not None and _is_running(holder) is not False:
            return _describe(holder)
        time.sleep(0.05)
    if holder is None:
        return f"a process that has not named itself in {path}"
    return (f"{_describe(holder)}, which no longer runs: a process it started (e.g. a dataloader worker) "
            f"still holds the lock and should exit shortly")


@dataclass(kw_only=True)
class RunDirLock:
    """The lock held on one run dir; `left_by` is the holder a dead run left named in it."""

    path: Path
    fd: int
    left_by: LockHolder | None

    @classmethod
    def acquire(cls, output_dir: Path) -> RunDirLock:
        output_dir.mkdir(parents=True, exist_ok=True)
        path = output_dir / LOCK_FILE
        try:  # never through a symlink: the file is truncated and rewritten
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as err:
            reason = "it is a symlink" if err.errno == errno.ELOOP else err.strerror
            raise RunDirLockedError(f"cannot open the run dir's lock file {path} ({reason}); remove it if no run "
                                    f"is using {output_dir}, or choose another --output-dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirLockedError(f"{output_dir} is in use by another training run ({_holder_of_busy_lock(path)}); "
                                    f"wait for it to end, or choose another --output-dir") from None
        left_by = _read_holder(path)
        now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        record = LockHolder(pid=os.getpid(), host=socket.gethostname(), since=now)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        return cls(path=path, fd=fd, left_by=left_by)

    def release(self) -> None:
        os.ftruncate(self.fd, 0)  # an empty file: released cleanly, nothing left to report
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


@contextlib.contextmanager
def run_dir_lock(output_dir: Path, env: DistEnv) -> Iterator[None]:
    """Holds the run dir's lock around the block: rank 0 takes it, and when it cannot, every rank
    raises (no rank goes on alone into a collective that the others never reach)."""
    lock, failure = None, None
    if env.is_main:
        try:
            lock = RunDirLock.acquire(output_dir)
        except Exception as err:  # any failure: the other ranks must hear of it before raising here
            failure = err
    if broadcast_flag(failure is not None, env):
        raise failure or RunDirLockedError(f"rank 0 could not lock {output_dir / LOCK_FILE} (see its message)")
    if lock is not None and lock.left_by is not None:
        running = _is_running(lock.left_by)
        why = "which is no longer running" if running is False else "which no longer holds it"
        print(f"note: the lock {lock.path} was stale (left by {_describe(lock.left_by)}, {why}); taken over",
              file=sys.stderr, flush=True)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
