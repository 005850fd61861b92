"""The SEMINAR ranking model and its baselines in one harness.

    query_tokens, query_text ─► query_encoder ─┐
    item_index   ─► item_encoder  ─┴► x_t = a*q + (1-a)*item ─► gsu_query_vectors ─► u (B, H, D)
    history (item, query) ─► x_seq (B, L, D) ─► retriever.select(u, ...) ─► top-K positions
    query_emb, item_emb, x_seq[top-K] ─► ranking_head (ESU + MLP) ─► logit

The kinds differ only in the retriever, in whether G projections exist and in pretraining
(seminar.model.config.ModelKind); embeddings, ESU and scorer are shared.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from seminar.model.config import Modality, ModelConfig, ModelKind
from seminar.model.encoders import ItemEncoder, QueryEncoder
from seminar.model.head import RankingHead
from seminar.model.retrieval import (
    ExactRetriever,
    RecentRetriever,
    Retriever,
    SimHashRetriever,
    gather_topk,
)


def build_retriever(config: ModelConfig) -> nn.Module:
    if config.kind is ModelKind.DIN:
        return RecentRetriever()
    if config.kind is ModelKind.ETA:
        return SimHashRetriever(config.dim, config.simhash_bits, config.simhash_seed)
    return ExactRetriever()


class SeminarModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.query_encoder = QueryEncoder(config)
        self.item_encoder = ItemEncoder(config)
        self.ranking_head = RankingHead(config)
        self.gsu = build_retriever(config)
        if self.ranking_head.no_query is not None:
            # One parameter, two owners: the head recognises recommendation rows by it.
            self.ranking_head.no_query = self.query_encoder.no_query
        self.register_buffer(
            "query_tokens", torch.zeros(config.num_queries, config.query_len, dtype=torch.long)
        )
        if config.use_query_text:
            # (Q, F) frozen MiniLM embedding per query index; row 0 (no query) stays zero.
            self.register_buffer("query_text", torch.zeros(config.num_queries, config.text_dim))

    # ---- frozen dataset features -------------------------------------------------------
    def load_features(
        self,
        query_tokens: np.ndarray,
        item_text: np.ndarray | None = None,
        item_attrs: np.ndarray | None = None,
        item_image: np.ndarray | None = None,
        *,
        query_text_emb: np.ndarray | None = None,
    ) -> None:
        """Copy the dataset's frozen features into the buffers (shapes must match the config).

        Without query_text_emb the query text buffer stays zero: the text part is then off.
        """
        with torch.no_grad():
            self.query_tokens.copy_(torch.as_tensor(np.array(query_tokens), dtype=torch.long))
            if self.config.use_query_text and query_text_emb is not None:
                self.query_text.copy_(
                    torch.as_tensor(np.array(query_text_emb), dtype=torch.float32)
                )
        self.item_encoder.load_features(item_text, item_attrs, item_image)

    # ---- embeddings ---------------------------------------------------------------------
    def pair(self, query_emb: Tensor, item_emb: Tensor) -> Tensor:
        a = self.config.alpha
        return a * query_emb + (1.0 - a) * item_emb

    def query_text_rows(self, query_index: Tensor) -> Tensor:
        """The frozen text embedding of each query index (zeros without the text part): (B, F)."""
        if self.config.use_query_text:
            return self.query_text[query_index]
        shape = (*query_index.shape, self.config.text_dim)
        return self.query_tokens.new_zeros(shape, dtype=torch.float32)

    def encode_queries(self, query_index: Tensor) -> Tensor:
        """Embedding of the given query indices (B,) -> (B, D); index 0 = no query."""
        return self.query_encoder(self.query_tokens[query_index], self.query_text_rows(query_index))

    def query_table(self) -> Tensor:
        """Embedding of every query index: (Q, D)."""
        index = torch.arange(self.config.num_queries, device=self.query_tokens.device)
        return self.encode_queries(index)

    def item_table(self) -> Tensor:
        """Embedding of every item index (row 0 = PAD = zeros): (I+2, D)."""
        index = torch.arange(self.config.num_items, device=self.query_tokens.device)
        return self.item_encoder(index)

    def component_tables(self) -> dict[str, Tensor]:
        """Per-modality tables with fusion weights folded in (docs/design.md section 2).

        x_l = tables["query"][q] + sum(tables[m][i] for each item modality m).
        """
        a = self.config.alpha
        index = torch.arange(self.config.num_items, device=self.query_tokens.device)
        tables = {"query": a * self.query_table()}
        for modality, part in self.item_encoder.components(index).items():
            tables[modality.value] = (1.0 - a) * part
        return tables

    def gsu_query_vectors(self, x_t: Tensor) -> Tensor:
        """u (B, H, D) with GSU score r[b, h, l] = <u[b, h], x_l>."""
        if self.config.kind in (ModelKind.SEMINAR, ModelKind.TWIN):
            return self.ranking_head.query_vectors(x_t)
        # SIM (and the signature input of ETA): the target pair itself, shared by every head.
        return x_t.unsqueeze(1).expand(-1, self.config.heads, -1)  # (B, D) -> (B, H, D)

    # ---- scoring --------------------------------------------------------------------------
    def score_candidates(
        self,
        query_emb: Tensor,  # (B, D)
        cand_emb: Tensor,  # (B, C, D)
        x_seq: Tensor,  # (B, L, D)
        seq_item: Tensor,  # (B, L)
        seq_query: Tensor,  # (B, L)
        seq_mask: Tensor,  # (B, L) bool
        retriever: Retriever | None = None,
    ) -> Tensor:
        """Logits (B, C) of C candidates per row against that row's history."""
        b, c, d = cand_emb.shape
        h, k = self.config.heads, self.config.top_k
        if x_seq.shape[1] == 0:
            # Cold start: one padding slot that no retriever may select; the ESU then adds 0.
            x_seq = x_seq.new_zeros(b, 1, d)
            seq_item, seq_query = seq_item.new_zeros(b, 1), seq_query.new_zeros(b, 1)
            seq_mask = seq_mask.new_zeros(b, 1)
        q = query_emb.unsqueeze(1).expand(b, c, d)  # (B, C, D)
        x_t = self.pair(q, cand_emb).reshape(b * c, d)  # (B*C, D)
        # Candidates of one row share its history: fold them into the retriever's row dim.
        u = self.gsu_query_vectors(x_t).reshape(b, c * h, d)  # (B, C*H, D)
        chooser = retriever if retriever is not None else self.gsu
        positions, valid = chooser.select(u, x_seq, seq_item, seq_query, seq_mask, k)  # (B, C*H, K)
        topk_emb = gather_topk(x_seq, positions).reshape(b * c, h, k, d)  # (B*C, H, K, D)
        topk_mask = valid.reshape(b * c, h, k)  # (B*C, H, K)
        logits = self.ranking_head(
            q.reshape(b * c, d), cand_emb.reshape(b * c, d), topk_emb, topk_mask
        )  # (B*C,)
        return logits.reshape(b, c)

    def forward(
        self,
        target_query: Tensor,  # (B,) query index of the target event
        candidates: Tensor,  # (B, C) item indices (positive first in training)
        seq_item: Tensor,  # (B, L)
        seq_query: Tensor,  # (B, L)
        seq_mask: Tensor,  # (B, L) bool
        retriever: Retriever | None = None,
        extra_events: Tensor | None = None,  # (B, E, D) appended pair embeddings (PSU's EOS)
    ) -> Tensor:
        """Logits (B, C). Each distinct item/query is encoded once per call, then gathered."""
        queries = self.query_table()  # (Q, D): small, the whole table
        # Encode only the items this batch touches (far fewer than the catalog).
        flat = torch.cat([seq_item.flatten(), candidates.flatten()])  # (B*L + B*C,)
        ids, inverse = torch.unique(flat, return_inverse=True)
        emb = self.item_encoder(ids)  # (U, D)
        n = seq_item.numel()
        seq_emb = emb[inverse[:n].view(seq_item.shape)]  # (B, L, D)
        cand_emb = emb[inverse[n:].view(candidates.shape)]  # (B, C, D)
        x_seq = self.pair(queries[seq_query], seq_emb)  # (B, L, D)
        if extra_events is not None:
            x_seq = torch.cat([x_seq, extra_events], dim=1)  # (B, L+E, D)
            e = extra_events.shape[1]
            seq_item = torch.cat([seq_item, seq_item.new_zeros(len(seq_item), e)], dim=1)
            seq_query = torch.cat([seq_query, seq_query.new_zeros(len(seq_query), e)], dim=1)
            seq_mask = torch.cat([seq_mask, seq_mask.new_ones(len(seq_mask), e)], dim=1)
        return self.score_candidates(
            queries[target_query],
            cand_emb,
            x_seq,
            seq_item,
            seq_query,
            seq_mask,
            retriever,
        )


__all__ = ["Modality", "ModelConfig", "ModelKind", "SeminarModel"]
