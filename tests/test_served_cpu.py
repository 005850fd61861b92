"""bench/served_cpu.py and the perf report's CPU table: who listens on a port, what a process
told /proc, and the sentences the table supports (real sockets and processes; the numbers of
the table tests are made up and say so)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seminar.bench.perf import saturation_markdown
from seminar.bench.served_cpu import (
    CLIENT,
    PROXY,
    STUBS,
    TRITON,
    CpuSnapshot,
    Role,
    ServedPath,
    cpu_seconds,
    cpu_table,
    find_served_path,
    listening_pid,
    other_cores,
    own_cpu_seconds,
)
from seminar.processes import LOOPBACK


def test_the_listener_of_a_port_is_found_and_a_plain_listener_is_no_triton() -> None:
    # A process of its own: this test process may have tritonserver children (the session's
    # served fixtures), which would make it a proxy in front of Triton.
    script = (
        "import socket, sys, time\n"
        f"server = socket.socket(); server.bind(({LOOPBACK!r}, 0)); server.listen()\n"
        "print(server.getsockname()[1], flush=True); time.sleep(60)\n"
    )
    listener = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        port = int(listener.stdout.readline())
        assert listening_pid(port) == listener.pid
        # It listens, but it is not tritonserver and has no tritonserver child.
        assert find_served_path(f"{LOOPBACK}:{port}") is None
    finally:
        listener.kill()
        listener.wait()
    assert listening_pid(port) is None  # closed
    assert find_served_path(f"10.1.2.3:{port}") is None  # not this machine: nothing to read
    assert find_served_path("127.0.0.1:grpc") is None  # perf_analyzer names the bad address


def test_cpu_seconds_grow_with_work_and_a_gone_process_has_none() -> None:
    before = cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    assert cpu_seconds(os.getpid()) >= before + 0.03  # clock ticks of 10 ms
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert cpu_seconds(child.pid) is None


def test_a_proxied_tritonserver_names_its_own_grpc_port_and_stub_rows() -> None:
    # A process whose command line reads like tritonserver's (python ignores the arguments).
    fake = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "--grpc-address=127.0.0.1",
         "--grpc-port=18123", "--http-port=18124"]
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while b"--grpc-port" not in Path(f"/proc/{fake.pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline, "the fake tritonserver did not start"
        time.sleep(0.01)  # its command line reads empty until the exec completed
    try:
        path = ServedPath(
            "127.0.0.1:9", listener=os.getpid(), tritonserver=fake.pid,
            stubs={"pipeline": (11, 12), "features": (13,), "ranking_head": (14,)},
        )  # fmt: skip
        assert path.proxied
        assert path.triton_address() == "127.0.0.1:18123"
        roles = path.processes(steps=("pipeline",))
        assert [(role.kind, role.pids) for role in roles] == [
            (PROXY, (os.getpid(),)),
            (TRITON, (fake.pid,)),
            (STUBS, (11, 12)),
            (STUBS, (13, 14)),  # the models the ensemble does not schedule, on one row
        ]
        assert "2 instances" in roles[2].label
        direct = ServedPath("127.0.0.1:18123", fake.pid, fake.pid)
        assert not direct.proxied and direct.triton_address() is None
    finally:
        fake.kill()
        fake.wait()


def test_cpu_table_divides_by_the_window_and_the_requests() -> None:
    roles = [Role("client", CLIENT, (1,)), Role("stubs", STUBS, (2, 3))]
    before = CpuSnapshot(
        wall=10.0, machine_busy=100.0, machine_idle=50.0, processes={1: 0, 2: 0, 3: 0}
    )
    after = CpuSnapshot(  # made-up numbers: 4 s of wall time, 2 cores
        wall=14.0, machine_busy=107.0, machine_idle=51.0, processes={1: 0.4, 2: 2.0, 3: 2.2}
    )
    rows = {row["process"]: row for row in cpu_table(roles, before, after, requests=1000)}
    assert rows["client"]["cores"] == pytest.approx(0.1)
    assert rows["client"]["ms_per_request"] == pytest.approx(0.4)
    assert rows["stubs"]["ms_per_request"] == pytest.approx(4.2)
    assert rows["other processes on the machine"]["cores"] == pytest.approx((7 - 4.6) / 4)
    assert rows["idle"]["cores"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="request count"):
        cpu_table(roles, before, after, requests=0)
    # 2.4 s of the machine's 7 busy seconds were not the roles'; 0.4 s of them known to be ours
    assert other_cores(roles, before, after, known_seconds=0.4) == pytest.approx(0.5)
    assert own_cpu_seconds() > 0


def _run(address: str, proxied: bool, rps: float, proxy_ms: float) -> dict:
    rows = [
        {"process": "perf_analyzer", "kind": CLIENT, "cores": 0.1, "ms_per_request": 0.2},
        {"process": "proxy", "kind": PROXY, "cores": 0.3, "ms_per_request": proxy_ms},
        {"process": "tritonserver", "kind": TRITON, "cores": 0.15, "ms_per_request": 0.35},
        {"process": "`pipeline` stubs", "kind": STUBS, "cores": 1.4, "ms_per_request": 3.6},
        {"process": "idle", "kind": "idle", "cores": 0.05, "ms_per_request": 0.1},
    ]
    return {"address": address, "proxied": proxied, "concurrency": 8, "seconds": 6.0,
            "requests": int(rps * 6), "rps": rps, "rows": rows}  # fmt: skip


def test_saturation_markdown_states_both_paths_from_their_numbers() -> None:
    in_process = {"workers": 2, "rps": 600.0, "cpu_ms_per_request": 3.3}  # made-up
    runs = [_run("127.0.0.1:18001", True, 400.0, 0.8), _run("127.0.0.1:4001", False, 500.0, 0.01)]
    text = saturation_markdown([{"runs": runs, "in_process": in_process}], goal_share=0.8)
    assert "| `pipeline` stubs | 1.40 | 3.60 | 1.40 | 3.60 |" in text
    assert (
        "the served path took 4.75 ms of CPU per request, of which the stubs 3.60 and the proxy 0.80"
        in text
    )
    assert "0.67× the in-process workers' (goal >= 0.8×: missed)" in text
    assert "0.83× the in-process workers' (goal >= 0.8×: met)" in text
    # 3.3 ms in-process / (3.96 ms served + 0.2 ms client) at Triton's own port
    assert "an in-process worker spends 3.30 ms of CPU, 0.79× what the served path" in text
    # the budget at 0.8x: 3.3 / 0.8 = 4.125 ms; through the proxy 4.95 ms were spent
    assert "at 0.8× they may spend 4.12 ms, 0.83 ms less than here" in text
    assert saturation_markdown([]) == ""
    assert saturation_markdown([{"runs": [], "in_process": in_process}]) == ""


def test_saturation_rounds_judge_the_median_round_not_a_lucky_one() -> None:
    """Three rounds (made-up numbers) whose proxy shares are 0.70, 0.85 and 0.75: one round
    alone would meet the goal, the median does not, and the CPU table is the median round's."""
    rounds = [
        {
            "runs": [
                _run("127.0.0.1:18001", True, proxy_rps, 0.8 + number / 10),
                _run("127.0.0.1:4001", False, direct_rps, 0.01),
            ],
            "in_process": {"workers": 2, "rps": 600.0, "cpu_ms_per_request": 3.0},
        }
        for number, (proxy_rps, direct_rps) in enumerate([(420, 510), (510, 540), (450, 480)])
    ]
    text = saturation_markdown(rounds, goal_share=0.8)
    assert "| 2 | 600.0 | 510.0 | 0.85× | 540.0 | 0.90× |" in text
    assert (
        "At 127.0.0.1:18001 (`seminar serve`'s gRPC proxy): median share 0.75× over 3 rounds "
        "(from 0.70× to 0.85×); goal >= 0.8×: missed on the median." in text
    )
    assert (
        "At 127.0.0.1:4001 (tritonserver): median share 0.85× over 3 rounds (from 0.80× to "
        "0.90×); goal >= 0.8×: met on the median." in text
    )
    assert "## CPU per process at saturation, round 3 (the median;" in text
    assert "and the proxy 1.00" in text  # round 3's proxy: 0.8 + 2 / 10 ms per request
