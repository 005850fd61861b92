"""The Triton-lang kernels and the retriever on CUDA against the torch CPU reference.

Runs only where torch sees a CUDA GPU; elsewhere it is skipped with that reason (the kernels
themselves are checked on the CPU under TRITON_INTERPRET=1 by tests/test_gpu_check.py). The
checks are bench/gpu_check.py's, on SYNTHETIC random codebooks: they need numpy, torch and
triton only, so a bare GPU machine runs this file (tests/conftest.py then loads no plugins).
"""

from __future__ import annotations

import pytest
import torch

from seminar.bench.gpu_check import (
    GpuCheckConfig,
    check_cuda_retriever,
    check_device_guard,
    check_kernels,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
]
SIZES = GpuCheckConfig(lengths=(1_000, 2_000), candidates=7)


def test_triton_kernels_match_torch() -> None:
    done = check_kernels(SIZES, "cuda")
    assert "4-bit L=2000" in done and "8-bit L=0" in done


def test_cuda_retrieve_matches_cpu() -> None:
    assert len(check_cuda_retriever(SIZES)) == 6


def test_kernels_launch_on_their_tensors_gpu() -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip("one GPU visible: the device guard needs a second")
    assert "agrees" in check_device_guard(SIZES)
