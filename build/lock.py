"""One writer at a time per model repository: an flock on a file beside the repository.

`seminar build` and `seminar retire` hold the lock from their first check of the repository
to their last rename into it, so two of them never interleave: a second build of the same
version sees the first one's result in its own preflight, and the `seminar` pin is always
computed from the repository as the lock holder sees it.

The lock file sits beside the repository, not inside it: Triton takes every folder of the
repository for a model. It is never deleted (unlinking a locked file would let a newcomer
lock a fresh inode while a waiter still holds the old one). The holder writes its pid, the
operation and the version into it, so a waiter can say whom it waits for. flock belongs to
the open file: a killed holder releases it with its last file descriptor.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from seminar.errors import ConflictError

LOCK_SUFFIX = ".lock"


def lock_path(repo: Path) -> Path:
    """`.<repo name>.lock` in the folder that holds the repository."""
    repo = repo.resolve()
    return repo.parent / f".{repo.name}{LOCK_SUFFIX}"


@dataclass(frozen=True)
class LockHolder:
    """What the holder of a repository lock wrote into the lock file."""

    pid: int
    operation: str  # "build" or "retire"
    version: int

    def describe(self) -> str:
        return f"pid {self.pid} ({self.operation} of version {self.version})"


def read_holder(path: Path) -> LockHolder | None:
    """The holder recorded in a lock file; None when empty or unreadable (being written)."""
    try:
        record = json.loads(path.read_text())
        return LockHolder(int(record["pid"]), str(record["operation"]), int(record["version"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class RepositoryLock:
    """Exclusive lock on one model repository, held for the body of a `with` block.

    When another process holds it, `on_wait` is told once, in one line, who holds it (pid,
    operation, version), and the lock is waited for: without limit, or up to `timeout_s`
    (then ConflictError).
    """

    def __init__(
        self,
        repo: Path,
        operation: str,
        version: int,
        on_wait: Callable[[str], None] = lambda _line: None,
        timeout_s: float | None = None,
        poll_s: float = 0.2,
    ) -> None:
        self.repo = repo
        self.path = lock_path(repo)
        self.holder = LockHolder(os.getpid(), operation, version)
        self.on_wait = on_wait
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self._fd: int | None = None

    def __enter__(self) -> RepositoryLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_lock(fd):
                self.on_wait(self._waiting_line())
                self._wait(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(self.holder.__dict__) + "\n").encode(), 0)
        except BaseException:
            os.close(fd)  # also drops the lock if it was taken
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # no stale holder for the next waiter to report
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def _waiting_line(self) -> str:
        holder = None
        for _ in range(10):  # the holder may be between taking the lock and writing its record
            holder = read_holder(self.path)
            if holder is not None:
                break
            time.sleep(0.05)
        who = holder.describe() if holder else "another process"
        return f"{self.repo} is locked by {who}; waiting for it to finish"

    def _wait(self, fd: int) -> None:
        if self.timeout_s is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return
        deadline = time.monotonic() + self.timeout_s
        while not _try_lock(fd):
            if time.monotonic() > deadline:
                raise ConflictError(
                    f"{self.repo} is still locked after {self.timeout_s:.0f} s "
                    f"(lock file {self.path})"
                )
            time.sleep(self.poll_s)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
