"""What tritonserver leaves behind, read from /proc: its Python-backend stubs and shared memory.

tritonserver runs in its own process group (we start it with a new session), and every
Python-backend model instance is a `triton_python_backend_stub` child in that group whose
command line names its model file (`<repo>/<model>/<version>/model.py`) and its shared-memory
region (`/dev/shm/triton_python_backend_shm_region_<uuid>`). That is all a supervisor needs:

- a stub in state `T` (stopped) stalls every request of its model; Triton 2.51's Python
  backend gives a request up after about 1 s without the stub's heartbeat and then takes the
  stub's late answer for the next request, which corrupts its shared memory and aborts the
  server, so a stopped stub must be resumed at once;
- a stub in state `Z` died (Triton only reaps stubs when it unloads their model), so every
  request of that model now fails until the model is loaded again;
- when tritonserver itself dies, stubs that were blocked on a lock it held ignore SIGTERM and
  live on, and the shared-memory regions it created stay in /dev/shm: the group is killed with
  SIGKILL and the regions it had mapped are unlinked.

Linux only (it reads /proc), like the tritonserver binary itself.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"
STUB_BINARY = "triton_python_backend_stub"


@dataclass(frozen=True)
class Stub:
    """One Python-backend stub process: which model version it serves and its state."""

    pid: int
    model: str
    version: str
    state: str  # /proc/PID/stat state letter: R, S, D, T (stopped), t (traced), Z (dead)

    @property
    def stopped(self) -> bool:
        return self.state == "T"

    @property
    def dead(self) -> bool:
        return self.state in ("Z", "X")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of `pid`, or None when it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[2])


def _cmdline(pid: int) -> list[str]:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _stub_target(argv: list[str]) -> tuple[str, str] | None:
    """(model, version) of a stub command line `stub <repo>/<model>/<version>/model.py ...`."""
    if not argv or not argv[0].endswith(STUB_BINARY) or len(argv) < 2:
        return None
    model_file = Path(argv[1])
    return model_file.parent.parent.name, model_file.parent.name


def group_pids(pgid: int) -> list[int]:
    """Every live (or zombie) process whose process group is `pgid`."""
    pids = []
    for entry in os.scandir(PROC):
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] == pgid:
                pids.append(int(entry.name))
    return pids


class StubWatch:
    """The stubs of one tritonserver process group, re-read cheaply on every tick.

    A full /proc scan (to find new stubs, e.g. after a model load) runs every
    `rescan_every` ticks; in between only the known stubs' stat files are read. The model of a
    stub must be remembered from when it was alive: a zombie has no command line.
    """

    def __init__(self, pgid: int, rescan_every: int = 10) -> None:
        self.pgid = pgid
        self.rescan_every = rescan_every
        self._targets: dict[int, tuple[str, str]] = {}
        self._ticks = 0

    def rescan(self) -> None:
        for pid in group_pids(self.pgid):
            if pid not in self._targets:
                target = _stub_target(_cmdline(pid))
                if target is not None:
                    self._targets[pid] = target

    def stubs(self) -> list[Stub]:
        """The known stubs with their current state; forgets the ones that are gone (reaped)."""
        if self._ticks % self.rescan_every == 0:
            self.rescan()
        self._ticks += 1
        out = []
        for pid, (model, version) in list(self._targets.items()):
            stat = _stat(pid)
            if stat is None or stat[1] != self.pgid:
                del self._targets[pid]
                continue
            out.append(Stub(pid, model, version, stat[0]))
        return out


def mapped_shm_regions(pid: int) -> set[str]:
    """Names of the Python-backend shared-memory regions that process `pid` has mapped."""
    try:
        maps = (PROC / str(pid) / "maps").read_text()
    except OSError:
        return set()
    regions = set()
    for line in maps.splitlines():
        path = line.rsplit(" ", 1)[-1]
        name = path.rsplit("/", 1)[-1]
        if path.startswith(str(SHM_DIR)) and name.startswith(SHM_PREFIX):
            regions.add(name.removesuffix(" (deleted)"))
    return regions


def kill_group(pgid: int, timeout_s: float = 5.0) -> list[int]:
    """SIGKILL every process of the group and wait until none is left; the pids killed.

    Zombies (whose parent is already gone) are reaped by init; they count as gone.
    """
    pids = group_pids(pgid)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return pids
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [pid for pid in group_pids(pgid) if (_stat(pid) or ("Z", 0))[0] != "Z"]
        if not alive:
            break
        time.sleep(0.05)
    return pids


def unlink_regions(names: Iterable[str]) -> list[str]:
    """Remove the given /dev/shm regions that still exist; the names removed."""
    removed = []
    for name in sorted(set(names)):
        if not name.startswith(SHM_PREFIX) or "/" in name:
            continue  # never touch anything but a Python-backend region
        try:
            (SHM_DIR / name).unlink()
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed
