"""The fused Triton-lang ADC kernel and torch on CUDA against the torch CPU reference.

Runs only where torch sees a CUDA GPU; elsewhere it is skipped with that reason.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seminar.pq import ScoringBackend
from seminar.pq.adc import adc_scores_lut, build_luts
from tests.support.pq import PQ_TEST_K

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"),
]


@pytest.mark.parametrize("world", ["pq_world_8bit", "pq_world_4bit"])
def test_triton_kernel_matches_torch(world: str, request) -> None:
    from seminar.pq.triton_kernel import adc_scores_triton

    w = request.getfixturevalue(world)
    cb = w.codebooks
    centroids = torch.from_numpy(cb.centroids)
    u = torch.randn(7, 4, cb.dim, generator=torch.Generator().manual_seed(0))
    _, _, codes = w.store.user(4)
    shared = torch.from_numpy(np.ascontiguousarray(codes))[None]  # (1, L, C)
    per_row = torch.from_numpy(np.ascontiguousarray(w.store.codes[:777].reshape(7, 111, -1)))
    for c in (shared, per_row):
        want = adc_scores_lut(build_luts(u, centroids), c)
        got = adc_scores_triton(u.cuda(), c.cuda(), centroids.cuda()).cpu()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        assert (got.topk(PQ_TEST_K, -1).values - want.topk(PQ_TEST_K, -1).values).abs().max() < 1e-3


@pytest.mark.parametrize("backend", ["triton", "torch_lut", "torch_decode"])
def test_cuda_retrieve_matches_cpu(pq_world_8bit, backend: str) -> None:
    w = pq_world_8bit
    x_t = torch.randn(5, w.spec.dim, generator=torch.Generator().manual_seed(1))
    cpu = w.retriever(backend=ScoringBackend.TORCH_LUT)
    gpu = w.retriever(device="cuda", backend=ScoringBackend(backend))
    for user in range(w.store.n_users):
        _, _, codes, _ = cpu.user_sequence(user)
        u = cpu.query_vectors(x_t)
        torch.testing.assert_close(
            gpu.adc_scores(u.cuda(), codes.cuda()).cpu(),
            cpu.adc_scores(u, codes),
            rtol=1e-4,
            atol=1e-4,
        )
        e_cpu, m_cpu = cpu.retrieve(user, x_t)
        e_gpu, m_gpu = gpu.retrieve(user, x_t.cuda())
        assert e_gpu.is_cuda and torch.equal(m_cpu, m_gpu.cpu())
        # the same winners up to float near-ties: the exact scores of the chosen events agree
        s_cpu = torch.einsum("bhd,bhkd->bhk", u, e_cpu).sort(-1).values
        s_gpu = torch.einsum("bhd,bhkd->bhk", u, e_gpu.cpu()).sort(-1).values
        assert ((s_gpu - s_cpu).abs() < 1e-3).float().mean() >= 0.98
