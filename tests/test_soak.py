"""`seminar bench soak` for 60 s: the production stack must survive hostile traffic and stalls.

The real `seminar serve` and `seminar gateway` over a real two-version repository; clients
with 5 ms - 2 s deadlines, 1000-candidate requests, 1 MB queries and cancellations; a model
process frozen for 3 s every 20 s; then kill -9 of tritonserver under load. The 10-minute run
of the same command writes reports/soak.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.build import BuiltRepo
from tests.support.serving import require_tritonserver

pytestmark = [pytest.mark.slow, pytest.mark.serving]


def test_soak_60_seconds_tritonserver_never_dies(
    model_repo_two_versions: Path, model_repo: BuiltRepo, tmp_path: Path
) -> None:
    require_tritonserver()
    out = tmp_path
    command = [
        sys.executable, "-m", "seminar.cli", "bench", "soak",
        "--repo", str(model_repo_two_versions), "--data", str(model_repo.data),
        "--duration", "60", "--stall-every", "20", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900)
    report = json.loads((out / "soak.json").read_text())
    assert report["tritonserver_survived"], proc.stdout + proc.stderr[-3000:]
    assert report["improper_codes"] == {}, report["examples"]
    assert len(report["stalls"]) == 2, report["stalls"]
    assert report["codes"].get("OK", 0) > 0 and report["codes"].get("DEADLINE_EXCEEDED", 0) > 0
    assert report["codes"].get("INVALID_ARGUMENT", 0) > 0, "1 MB queries must be refused"
    kill = report["kill"]
    assert kill["recovered_s"] is not None, kill
    assert kill["leftover_processes"] == [] and kill["leftover_shm"] == [], kill
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "soak.png").stat().st_size > 0
