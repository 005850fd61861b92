"""Ranking metrics on 1 + N candidate lists (the positive in column 0).

Ties are counted against the positive for HIT/NDCG/MRR (a constant model scores 0, not 1)
and as one half for AUC/GAUC, the usual convention.
"""

from __future__ import annotations

import numpy as np

CUTOFFS = (1, 5, 10, 50)
METRIC_NAMES = (
    *(f"hit@{k}" for k in CUTOFFS),
    *(f"ndcg@{k}" for k in CUTOFFS),
    "mrr",
    "auc",
    "gauc",
)


def global_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of pooled scores (Mann-Whitney U with average ranks for ties)."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average rank inside every run of equal scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    average = (starts + ends + 1) / 2.0  # 1-based average rank of each run
    ranks[order] = np.repeat(average, ends - starts)
    n_pos = float(labels.sum())
    n_neg = float(len(labels) - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def ranking_metrics(scores: np.ndarray) -> dict[str, float]:
    """scores (U, 1 + N), positive first -> the metrics of METRIC_NAMES, averaged over users."""
    scores = np.asarray(scores, dtype=np.float64)
    pos = scores[:, :1]  # (U, 1)
    neg = scores[:, 1:]  # (U, N)
    greater = (neg > pos).sum(axis=1)
    equal = (neg == pos).sum(axis=1)
    rank = greater + equal  # 0-based, pessimistic on ties
    out: dict[str, float] = {}
    for k in CUTOFFS:
        out[f"hit@{k}"] = float((rank < k).mean())
    for k in CUTOFFS:
        out[f"ndcg@{k}"] = float(np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0).mean())
    out["mrr"] = float((1.0 / (rank + 1.0)).mean())
    labels = np.zeros_like(scores, dtype=np.int64)
    labels[:, 0] = 1
    out["auc"] = global_auc(scores.ravel(), labels.ravel())
    per_user = (neg.shape[1] - greater - 0.5 * equal) / neg.shape[
        1
    ]  # (U,) share of negatives below
    out["gauc"] = float(per_user.mean())
    return out
