"""Where the CPU goes while Triton serves at saturation, per process, read from /proc.

`seminar perf --repo` compares Triton's throughput with in-process serving on the same cores;
when Triton serves less, the question is which process took the difference. This module finds
the processes behind a local gRPC address (the one listening on the port: tritonserver itself,
or `seminar serve`'s gRPC proxy with tritonserver as its child; tritonserver's Python-backend
stubs by model), and turns two snapshots of their CPU time, of the machine's (/proc/stat) and
of the ensemble's request count into CPU cores and CPU milliseconds per request per process.

Linux only (it reads /proc), like tritonserver itself.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from seminar.serving.process_group import StubWatch
from seminar.serving.process_group import _cmdline as command_line  # one /proc reader

PROC = Path("/proc")
_TICKS = os.sysconf("SC_CLK_TCK")
_LISTEN = "0A"  # the TCP state of a listening socket in /proc/net/tcp
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0", "[::1]")
TRITONSERVER = "tritonserver"


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (state first), or None when it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of every thread of `pid` so far; None when it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / _TICKS


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, idle) CPU seconds of all cores since boot, from /proc/stat's first line."""
    values = [int(v) for v in (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _TICKS, (idle + iowait) / _TICKS


def _pids() -> Iterator[int]:
    for entry in os.scandir(PROC):
        if entry.name.isdigit():
            yield int(entry.name)


def _comm(pid: int) -> str:
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""


def listening_pid(port: int) -> int | None:
    """The process holding the listening TCP socket of `port` (IPv4 or IPv6), or None."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for pid in _pids():
        try:
            fds = os.scandir(PROC / str(pid) / "fd")
            with fds:
                if any(os.readlink(fd.path) in inodes for fd in fds):
                    return pid
        except OSError:
            continue  # gone, or not ours to read
    return None


def split_address(address: str) -> tuple[str, int | None]:
    """HOST:PORT -> (host, port); port None when it is no number (the caller's client then
    names the bad address)."""
    host, _, port = address.rpartition(":")
    return host, int(port) if port.isdigit() else None


# What a process does on the served path (a table row's `kind`).
CLIENT, PROXY, TRITON, STUBS, OTHER, IDLE = (
    "client",
    "proxy",
    "tritonserver",
    "stubs",
    "other",
    "idle",
)


@dataclass(frozen=True)
class Role:
    """Processes that do one job, shown as one row."""

    label: str
    kind: str
    pids: tuple[int, ...]


@dataclass(frozen=True)
class ServedPath:
    """The local processes that serve a gRPC address."""

    address: str
    listener: int  # the process listening on the address's port
    tritonserver: int
    stubs: dict[str, tuple[int, ...]] = field(default_factory=dict)  # model -> stub pids

    @property
    def proxied(self) -> bool:
        """A proxy (`seminar serve`) listens in front of tritonserver."""
        return self.listener != self.tritonserver

    def triton_address(self) -> str | None:
        """tritonserver's own gRPC address (from its command line) when it is proxied."""
        if not self.proxied:
            return None
        args = dict(
            arg[2:].split("=", 1)
            for arg in command_line(self.tritonserver)
            if arg.startswith("--") and "=" in arg
        )
        port = args.get("grpc-port")
        return f"{args.get('grpc-address', '127.0.0.1')}:{port}" if port else None

    def processes(self, steps: tuple[str, ...] = ()) -> list[Role]:
        """The served path's processes, in the order a table lists them: the stubs of each
        model in `steps` (the models the driven ensemble schedules) on their own row, the
        stubs of every other model of the repository on one."""
        roles = []
        if self.proxied:
            label = "`seminar serve` (its gRPC proxy and supervisor)"
            roles.append(Role(label, PROXY, (self.listener,)))
        label = "tritonserver (gRPC front end, ensemble scheduler, backend IPC)"
        roles.append(Role(label, TRITON, (self.tritonserver,)))
        others: list[int] = []
        for model, pids in sorted(self.stubs.items()):
            if model not in steps:
                others += pids
                continue
            plural = "s" * (len(pids) > 1)
            roles.append(Role(f"`{model}` stubs ({len(pids)} instance{plural})", STUBS, pids))
        if others:
            label = f"stubs of the repository's other models ({len(others)} processes)"
            roles.append(Role(label, STUBS, tuple(others)))
        return roles


def find_served_path(address: str) -> ServedPath | None:
    """The processes behind `address` when it is served on this machine by tritonserver,
    directly or through a parent process's proxy; None otherwise (a remote Triton, another
    user's processes)."""
    host, port = split_address(address)
    if host not in _LOCAL_HOSTS or port is None:
        return None
    listener = listening_pid(port)
    if listener is None:
        return None
    tritonserver = listener if _comm(listener) == TRITONSERVER else None
    if tritonserver is None:
        children = [
            pid
            for pid in _pids()
            if _comm(pid) == TRITONSERVER and (_stat_fields(pid) or ["", "0"])[1] == str(listener)
        ]
        if len(children) != 1:
            return None
        tritonserver = children[0]
    fields = _stat_fields(tritonserver)
    if fields is None:
        return None
    stubs: dict[str, list[int]] = {}
    for stub in StubWatch(int(fields[2])).stubs():  # the stubs share tritonserver's group
        stubs.setdefault(stub.model, []).append(stub.pid)
    return ServedPath(
        address, listener, tritonserver, {model: tuple(pids) for model, pids in stubs.items()}
    )


@dataclass(frozen=True)
class CpuSnapshot:
    wall: float
    machine_busy: float
    machine_idle: float
    processes: dict[int, float]  # pid -> CPU seconds so far

    @classmethod
    def take(cls, roles: list[Role]) -> CpuSnapshot:
        busy, idle = machine_cpu_seconds()
        seconds = {pid: cpu_seconds(pid) for role in roles for pid in role.pids}
        return cls(
            time.monotonic(),
            busy,
            idle,
            {pid: value for pid, value in seconds.items() if value is not None},
        )


def cpu_table(
    roles: list[Role], before: CpuSnapshot, after: CpuSnapshot, requests: int
) -> list[dict[str, float | str]]:
    """Per role: CPU cores used between the snapshots and CPU ms per request; then the rest of
    the machine (processes not listed) and its idle cores."""
    wall = after.wall - before.wall
    if wall <= 0 or requests <= 0:
        raise ValueError(f"need a positive window and request count, got {wall} s, {requests}")

    def row(label: str, kind: str, seconds: float) -> dict[str, float | str]:
        return {
            "process": label,
            "kind": kind,
            "cores": seconds / wall,
            "ms_per_request": 1000 * seconds / requests,
        }

    rows, listed = [], 0.0
    for role in roles:
        seconds = sum(
            after.processes[pid] - before.processes[pid]
            for pid in role.pids
            if pid in before.processes and pid in after.processes
        )
        listed += seconds
        rows.append(row(role.label, role.kind, seconds))
    busy = after.machine_busy - before.machine_busy
    rows.append(row("other processes on the machine", OTHER, max(0.0, busy - listed)))
    rows.append(row("idle", IDLE, after.machine_idle - before.machine_idle))
    return rows


def other_cores(
    roles: list[Role], before: CpuSnapshot, after: CpuSnapshot, known_seconds: float = 0.0
) -> float:
    """Cores that processes not in `roles` took between the snapshots, less `known_seconds`
    of CPU whose owner is known (the measuring command and its children)."""
    rows = cpu_table(roles, before, after, requests=1)
    other = next(row["cores"] for row in rows if row["kind"] == OTHER)
    return max(0.0, other - known_seconds / (after.wall - before.wall))


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children that were waited for."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system
