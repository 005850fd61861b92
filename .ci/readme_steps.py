"""Run README.md's "Step by step" block verbatim in this checkout, the way a user would.

Each line runs as written, in one bash session (so `source .venv/bin/activate` holds). A line
whose comment says "own terminal" is a server: it starts in the background, its output goes to
runs/readme_steps/<n>.log, and the next line waits until it answers (`seminar serve` on its
/ready, the gateway on grpc.health.v1). Passes (exit 0) when every line exits 0 and the final
`seminar load` counted no failed request; exits 1 otherwise, naming the line and its log.

    .venv/bin/python .ci/readme_steps.py      # on a clean clone, after `make setup`
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "runs" / "readme_steps"
LOAD_REPORT = ROOT / "runs" / "load.json"  # `seminar load`'s default --out
SERVE_READY = "http://127.0.0.1:8003/ready"  # `seminar serve`'s default --health-port
GATEWAY = "127.0.0.1:50051"  # `seminar gateway`'s default --port
READY_TIMEOUT_S = 300

WAIT_HTTP = (
    "import sys, time, urllib.request\n"
    "deadline = time.monotonic() + float(sys.argv[2])\n"
    "while time.monotonic() < deadline:\n"
    "    try:\n"
    "        urllib.request.urlopen(sys.argv[1], timeout=1)\n"
    "        sys.exit(0)\n"
    "    except Exception:\n"
    "        time.sleep(0.5)\n"
    "sys.exit(1)\n"
)
WAIT_GRPC = (
    "import sys, time, grpc\n"
    "from grpc_health.v1 import health_pb2, health_pb2_grpc\n"
    "deadline = time.monotonic() + float(sys.argv[2])\n"
    "with grpc.insecure_channel(sys.argv[1]) as channel:\n"
    "    stub = health_pb2_grpc.HealthStub(channel)\n"
    "    while time.monotonic() < deadline:\n"
    "        try:\n"
    "            reply = stub.Check(health_pb2.HealthCheckRequest(service=''), timeout=1)\n"
    "            if reply.status == health_pb2.HealthCheckResponse.SERVING:\n"
    "                sys.exit(0)\n"
    "        except grpc.RpcError:\n"
    "            pass\n"
    "        time.sleep(0.5)\n"
    "sys.exit(1)\n"
)


def readme_block(readme: Path) -> list[str]:
    """The command lines of the first ```bash block under "## Step by step"."""
    text = readme.read_text()
    section = text.split("## Step by step", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    if block is None:
        raise SystemExit("README.md: no ```bash block under '## Step by step'")
    return [line for line in block.group(1).splitlines() if line.strip()]


def script(lines: list[str]) -> str:
    """One bash script: the lines verbatim, servers in the background with a readiness wait."""
    out = [
        "set -euo pipefail",
        "servers=()",
        "trap 'kill \"${servers[@]}\" 2>/dev/null; wait' EXIT",
    ]
    for number, line in enumerate(lines, 1):
        out.append(f"echo {shlex.quote(f'[readme {number}] {line}')} >&2")
        if "own terminal" not in line:
            out.append(line)
            continue
        log = LOGS / f"{number}.log"
        command = line.split("#", 1)[0].strip()
        out += [f"{command} > {shlex.quote(str(log))} 2>&1 &", "servers+=($!)"]
        if " serve " in f" {command} ":
            probe, target = WAIT_HTTP, SERVE_READY
        else:
            probe, target = WAIT_GRPC, GATEWAY
        out.append(
            f"python -c {shlex.quote(probe)} {target} {READY_TIMEOUT_S} || "
            f"{{ echo 'line {number} never became ready; log {log}:' >&2; tail -30 {log} >&2; exit 1; }}"
        )
    return "\n".join(out) + "\n"


def main() -> int:
    lines = readme_block(ROOT / "README.md")
    LOGS.mkdir(parents=True, exist_ok=True)
    LOAD_REPORT.unlink(missing_ok=True)
    result = subprocess.run(["bash", "-c", script(lines)], cwd=ROOT)
    if result.returncode != 0:
        print(f"readme steps: a line failed (exit {result.returncode})", file=sys.stderr)
        return 1
    report = json.loads(LOAD_REPORT.read_text())
    failed = report["requests"] - report["ok"]
    print(
        f"readme steps: every line ran; seminar load sent {report['requests']} requests, "
        f"{report['ok']} OK, {failed} failed (codes {report['codes']}, arms {report['arms']})"
    )
    return 0 if failed == 0 and report["requests"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
