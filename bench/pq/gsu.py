"""The GSUs the bench compares, one request each, and recall against the exact one."""

from __future__ import annotations

import torch

from seminar.pq.retriever import PQRetriever


def threshold_recall(
    chosen: torch.Tensor, valid: torch.Tensor, exact_scores: torch.Tensor, k: int
) -> float:
    """Share of the K chosen events whose exact score reaches the exact K-th best score.

    chosen, valid (R, K); exact_scores (R, L). Events with equal vectors (a history repeats an
    item) tie, and either one is a correct pick: a position-set overlap would punish that.
    """
    kk = min(k, exact_scores.shape[1])
    kth = exact_scores.topk(kk, dim=-1).values[:, -1:]  # (R, 1)
    got = torch.gather(exact_scores, 1, chosen)  # (R, K)
    scale = exact_scores.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12)
    hit = (got >= kth - 1e-6 * scale) & valid
    return float(hit.sum(dim=-1).float().div(kk).mean())


def exact_gsu(retriever: PQRetriever, user: int, x_t: torch.Tensor, k: int):
    """The anchor: fetch the sequence's exact embeddings from the tables, one GEMM, top-K,
    gather the winners. Returns positions (B, H, K), valid, embeddings, scores (B*H, L)."""
    item, query, _, _ = retriever.user_sequence(user, with_codes=False)
    x = retriever.exact_vectors(item[0], query[0])  # (L, D)
    u = retriever.query_vectors(x_t)  # (B, H, D)
    b, h, d = u.shape
    scores = u.reshape(b * h, d) @ x.T  # (B*H, L)
    top = scores.topk(min(k, x.shape[0]), dim=-1).indices.reshape(b, h, -1)  # (B, H, K)
    emb = x.index_select(0, top.reshape(-1)).reshape(b, h, -1, d)  # (B, H, K, D)
    return top, torch.ones_like(top, dtype=torch.bool), emb, scores


def exact_gsu_faiss(retriever: PQRetriever, user: int, x_t: torch.Tensor, k: int):
    """The same exact GSU with faiss's exhaustive inner-product search (BLAS + heap) instead
    of GEMM + torch.topk: a second anchor, to show the first is not a weak one."""
    import faiss

    item, query, _, _ = retriever.user_sequence(user, with_codes=False)
    x = retriever.exact_vectors(item[0], query[0])  # (L, D)
    u = retriever.query_vectors(x_t)
    b, h, d = u.shape
    _, top = faiss.knn(u.reshape(b * h, d).numpy(), x.numpy(), k, metric=faiss.METRIC_INNER_PRODUCT)
    top = torch.from_numpy(top).reshape(b, h, -1)
    emb = x.index_select(0, top.reshape(-1)).reshape(b, h, -1, d)
    return top, torch.ones_like(top, dtype=torch.bool), emb


def pq_gsu(retriever: PQRetriever, user: int, x_t: torch.Tensor, k: int):
    """Our PQ GSU as served (`PQRetriever.retrieve`: codes -> scores -> top-K -> exact
    embeddings of the winners), plus the positions for recall."""
    item, query, pos, valid = retriever.retrieve_positions(user, x_t, k)
    emb = retriever.gather_winners(item, query, pos, valid)
    return pos, valid, emb
