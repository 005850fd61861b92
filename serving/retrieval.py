"""Batch retrieval for the `pq_retrieval` Triton model: candidate rows of many users at once.

A Triton batch is candidate rows, possibly of several users (dynamic batching merges requests).
`BatchRetrieval` groups the rows by user and calls the PQ engine once per user
(`seminar.pq.PQRetriever.retrieve`: ADC top-K over that user's stored sequence, then the exact
gather of the K winners), so a user's codes are scanned once for all of their candidates.

Shapes: B rows, D hidden size, H heads, K events per head.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from seminar import contract, manifest
from seminar.errors import ArtifactError
from seminar.serving.backend import RequestError
from seminar.serving.tail import OnlineTails


def pair_alpha(pq_dir: Path, retriever: object | None = None) -> float:
    """The model's pair weight alpha, recorded with the PQ artifacts (docs/design.md section 8).

    The PQ engine scores x_t = alpha * query_emb + (1 - alpha) * item_emb, but pq_retrieval
    receives query_emb and item_emb, so the artifacts must say which alpha the model used.
    """
    alpha = getattr(retriever, "alpha", None)
    if alpha is None:
        alpha = manifest.read_manifest(pq_dir).fields.get("alpha")
    if alpha is None:
        raise ArtifactError(
            f"{pq_dir / contract.MANIFEST_FILE} records no 'alpha' (the model's pair weight, "
            "needed to form x_t from query_emb and item_emb): seminar.pq.save_retriever must "
            "write it"
        )
    return float(alpha)


@dataclass
class BatchRetrieval:
    retriever: object  # seminar.pq.PQRetriever (imported lazily: seminar.pq pulls in faiss)
    alpha: float  # pair embedding x_t = alpha * query_emb + (1 - alpha) * item_emb
    k: int
    tails: OnlineTails | None = None  # users' online tails; None = the base store alone
    # Tail length of each user of the last call (for the backend's metrics).
    last_tail_lengths: list[int] = field(default_factory=list)

    @classmethod
    def load(
        cls,
        pq_dir: Path,
        device: str,
        k: int,
        verify: bool = True,
        tails: OnlineTails | None = None,
    ) -> BatchRetrieval:
        """Open this version's PQ artifacts on `device`; `verify` checks their sha256s (the
        Triton model verified its whole version already and passes False)."""
        from seminar.pq import load_pq_retriever

        retriever = load_pq_retriever(pq_dir, device=device, verify=verify)
        alpha = pair_alpha(pq_dir, retriever)
        if retriever.k != k:
            raise ArtifactError(
                f"{pq_dir}: PQ artifacts were built for K = {retriever.k}, the config says {k}"
            )
        return cls(retriever=retriever, alpha=alpha, k=k, tails=tails)

    @property
    def device(self) -> torch.device:
        return self.retriever.device

    @property
    def n_users(self) -> int:
        return self.retriever.store.n_users

    def sequence_lengths(self, user_index: np.ndarray) -> np.ndarray:
        """Stored events of each user (0 for cold start): (U',) -> (U',) int64."""
        offsets = self.retriever.store.offsets
        user_index = np.asarray(user_index, dtype=np.int64)
        known = user_index >= 0
        lengths = np.zeros(user_index.shape, dtype=np.int64)
        u = user_index[known]
        lengths[known] = offsets[u + 1] - offsets[u]
        return lengths

    def check_users(self, user_index: np.ndarray) -> None:
        """user_index (B,): -1 (cold start) or a stored user; anything else is a bad request."""
        bad = (user_index < contract.COLD_START_USER_INDEX) | (user_index >= self.n_users)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise RequestError(
                f"user_index row {row} is {int(user_index[row])}, "
                f"outside [-1, {self.n_users}) of this version's sequence store"
            )

    def tail_vectors(self, user_id: int) -> torch.Tensor | None:
        """Exact pair embeddings (T, D) of the user's online tail; None without one."""
        encoded = None if self.tails is None else self.tails.encode(user_id)
        if encoded is None:
            self.last_tail_lengths.append(0)
            return None
        item_index, query_emb = encoded
        self.last_tail_lengths.append(len(item_index))
        return self.retriever.pair_vectors(
            torch.from_numpy(item_index), torch.from_numpy(query_emb)
        )

    @torch.inference_mode()
    def __call__(
        self,
        user_index: torch.Tensor,
        query_emb: torch.Tensor,
        item_emb: torch.Tensor,
        user_id: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """user_index (B,) int64, query_emb / item_emb (B, D) float32 ->
        topk_emb (B, H, K, D) float32 and topk_mask (B, H, K) float32 (1 = real event),
        on the retriever's device. With `user_id` (B,) int64 and tails, each user's online
        tail competes with their stored events (cold-start users, index -1, are told apart
        by their ids)."""
        dev = self.device
        query_emb, item_emb = query_emb.to(dev), item_emb.to(dev)
        x_t = self.alpha * query_emb + (1.0 - self.alpha) * item_emb  # (B, D), as SeminarModel.pair
        users = user_index.cpu().numpy()
        with_tails = self.tails is not None and user_id is not None
        keys = user_id.cpu().numpy().reshape(-1) if with_tails else users
        self.last_tail_lengths = []
        topk_emb = topk_mask = None
        for key in np.unique(keys):
            rows = np.flatnonzero(keys == key)
            rows_t = torch.from_numpy(rows).to(dev)
            tail = self.tail_vectors(int(key)) if with_tails else None
            emb, valid = self.retriever.retrieve(
                int(users[rows[0]]), x_t[rows_t], self.k, tail=tail
            )  # (b, H, K, D)
            if topk_emb is None:
                b = len(users)
                topk_emb = emb.new_zeros((b, *emb.shape[1:]))  # (B, H, K, D)
                topk_mask = emb.new_zeros((b, *valid.shape[1:]))  # (B, H, K)
            topk_emb[rows_t] = emb.float()
            topk_mask[rows_t] = valid.to(topk_mask.dtype)
        return topk_emb, topk_mask
