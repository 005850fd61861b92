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
    return score_recall(torch.gather(exact_scores, 1, chosen), valid, exact_scores, k)


def score_recall(
    got: torch.Tensor, valid: torch.Tensor, exact_scores: torch.Tensor, k: int
) -> float:
    """threshold_recall from the exact scores got (R, K) of the chosen events themselves."""
    kk = min(k, exact_scores.shape[1])
    kth = exact_scores.topk(kk, dim=-1).values[:, -1:]  # (R, 1)
    scale = exact_scores.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12)
    hit = (got >= kth - 1e-6 * scale) & valid
    return float(hit.sum(dim=-1).float().div(kk).mean())


def embedding_recall(
    retriever: PQRetriever,
    x_t: torch.Tensor,
    emb: torch.Tensor,
    valid: torch.Tensor,
    exact_scores: torch.Tensor,
    k: int,
) -> float:
    """threshold_recall of a GSU that returns the winners' embeddings emb (B, H, K, D)."""
    u = retriever.query_vectors(x_t)  # (B, H, D)
    got = torch.einsum("bhd,bhkd->bhk", u, emb)
    return score_recall(got.reshape(-1, k), valid.reshape(-1, k), exact_scores, k)


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
    """Our PQ GSU as served, `PQRetriever.retrieve`: codes -> scores -> top-K -> the exact
    embeddings of the winners (B, H, K, D) and their validity (B, H, K)."""
    return retriever.retrieve(user, x_t, k)
