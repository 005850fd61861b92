"""`make gpu-check` in its CPU dry run (the Triton-lang kernels interpreted, TRITON_INTERPRET=1):
the same parts and report writer as on a GPU, at tiny SYNTHETIC sizes, so the script cannot rot;
the kernels compiled for a Hopper GPU ahead of time, which the interpreter never does; and the
kernels' refusals of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seminar.pq.triton_kernel import MAX_TOPK, SHARED_MEMORY_LIMIT, pq_topk_triton

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("triton", reason="the dry run interprets the Triton-lang kernels")


def test_dry_run_checks_the_kernels_and_writes_the_report(tmp_path: Path) -> None:
    # its own process, as make gpu-check runs it: TRITON_INTERPRET must be set before the
    # kernels are compiled, and the script maps the stage folders itself
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "gpu.json").read_text())
    status = {p["name"]: p["status"] for p in report["parts"]}
    assert status == {
        "checks": "passed",
        "copy": "passed",
        "kernels": "passed",
        "pq_retrieval": "passed",
        "tensorrt": "skipped",
    }
    checks = next(p for p in report["parts"] if p["name"] == "checks")["data"]["kernels"]
    # the 4-bit cases read the store's packed fast-scan blocks; L=3 and 0 are shorter than K
    assert checks == [f"{b}-bit L={n}" for b in (8, 4) for n in (200, 3, 0)]
    markdown = (tmp_path / "gpu.md").read_text()
    for n_events in (64, 200):
        assert f"| {n_events} | triton fused top-K |" in markdown
        assert f"| {n_events} | exact GSU (fp32 GEMM) |" in markdown
    retrieval = next(p for p in report["parts"] if p["name"] == "pq_retrieval")["data"]
    assert retrieval["path"] == "seminar.serving.retrieval.BatchRetrieval"
    assert retrieval["winners_agree"] >= 0.98


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"k": 65}, r"k must be in \[1, 64\]"),
        ({"codes": torch.zeros((10, 8), dtype=torch.int32)}, "codes must be uint8"),
        ({"n_events": 11}, r"n_events 11 outside \[0, 10\]"),
        ({"codes": torch.zeros((10, 6), dtype=torch.uint8)}, "codes hold C=6 per event"),
    ],
)
def test_topk_kernel_names_bad_input(change: dict, message: str) -> None:
    args = {
        "u": torch.zeros((2, 2, 16)),
        "codes": torch.zeros((10, 8), dtype=torch.uint8),
        "centroids": torch.zeros((2, 4, 256, 4)),
        "n_events": 10,
        "k": 5,
    } | change
    with pytest.raises(ValueError, match=message):
        pq_topk_triton(**args)


@pytest.mark.parametrize(
    ("packed", "k", "n_rows"),
    [(False, 10, 8), (True, MAX_TOPK, 400)],
    ids=["8-bit, small", "4-bit fast-scan, longest K-list"],
)
def test_the_kernels_compile_for_a_hopper_gpu_without_one(
    packed: bool, k: int, n_rows: int
) -> None:
    # The first H200 run found what the interpreted dry run cannot: the GPU compiler refused the
    # top-K kernel, and once that was mended its layout pass never ended on the hand-written
    # sort; with Triton's sort, a K-list of 256 took 580 KiB of shared memory. A child process,
    # so that a compiler that hangs again fails here instead.
    code = (
        "import json; from seminar.pq.triton_kernel import compile_for_gpu; print(json.dumps("
        f"compile_for_gpu((4, 16, 256, 4), k={k}, n_rows={n_rows}, packed={packed})))"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        pytest.fail("compiling the kernels for sm_90 took over 240 s: the compiler hangs")
    assert done.returncode == 0, done.stderr[-3000:]
    compiled = json.loads(done.stdout)
    assert set(compiled) == {"scores_kernel", "topk_kernel"}
    for name, sizes in compiled.items():
        assert sizes["ptx_bytes"] > 10_000, (name, sizes)
        assert 0 < sizes["shared_bytes"] <= SHARED_MEMORY_LIMIT, (name, sizes)
