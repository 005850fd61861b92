"""Modality embeddings: the query encoder and the gated multi-modal item encoder.

Frozen dataset features (query tokens, MiniLM text vectors, attribute ids, image vectors) are
persistent buffers, so a checkpoint carries everything serving needs and the encoders take
only indices as input.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from seminar.model.config import Modality, ModelConfig


class IdentityInitLinear(nn.Module):
    """The per-modality projection G_m: a D x D matrix that starts as the identity."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight.T


def masked_mean(emb: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean of emb (B, N, D) over mask (B, N); returns (B, D) and presence (B,) bool."""
    weight = mask.to(emb.dtype).unsqueeze(-1)  # (B, N, 1)
    count = weight.sum(dim=1)  # (B, 1)
    mean = (emb * weight).sum(dim=1) / count.clamp(min=1.0)  # (B, D)
    return mean, count.squeeze(-1) > 0


class QueryEncoder(nn.Module):
    """(query_tokens (B, T) int64, query_text_emb (B, F) float32) -> query_emb (B, D).

    Token part: the mean of learned token embeddings, LayerNormed. Text part (use_query_text):
    the query's frozen MiniLM embedding, projected and LayerNormed, mixed with the token part by
    a learned gate. Most words appear in few training events (and an unseen one is <unk>), so
    the tokens alone barely say what a query means; the frozen text embedding does from the
    first step, for queries never seen in training too. The text part counts only where the
    row has a query and its text is not all zeros, so a recommendation row and a dataset
    without text features take the token path alone.

    A row without a query (all tokens 0) maps to the learned "no query" vector. With
    query_relevance that vector is the output itself, shared with the ranking head, which
    recognises recommendation rows by it; older runs pass it through the norm and G.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        dim = config.dim
        self.text_dim = config.text_dim  # F of the query_text_emb input
        self.tokens = nn.Embedding(config.num_tokens, dim, padding_idx=0)
        nn.init.normal_(self.tokens.weight, std=0.1)
        with torch.no_grad():
            self.tokens.weight[0].zero_()
        self.no_query_is_output = config.query_relevance
        # As the output, the vector starts on the LayerNormed scale of every other query_emb.
        self.no_query = nn.Parameter(torch.randn(dim) * (1.0 if self.no_query_is_output else 0.1))
        self.norm = nn.LayerNorm(dim)  # same scale as the item modalities
        self.text_proj: nn.Linear | None = None
        if config.use_query_text:
            self.text_proj = nn.Linear(config.text_dim, dim, bias=False)
            self.text_norm = nn.LayerNorm(dim)
            self.gate_logits = nn.Parameter(torch.zeros(2))  # [tokens, text]
        self.proj = IdentityInitLinear(dim) if config.projections else None

    def fuse_text(self, token_part: Tensor, query_text_emb: Tensor, present: Tensor) -> Tensor:
        """Gate-weighted token and text parts where the row has text; token_part elsewhere."""
        if self.text_proj is None:
            return token_part
        has_text = present & (query_text_emb.abs().sum(dim=-1) > 0)  # (B,)
        text_part = self.text_norm(self.text_proj(query_text_emb))  # (B, D)
        gate = torch.softmax(self.gate_logits, dim=0)
        fused = gate[0] * token_part + gate[1] * text_part
        return torch.where(has_text.unsqueeze(-1), fused, token_part)

    def forward(self, query_tokens: Tensor, query_text_emb: Tensor) -> Tensor:
        emb = self.tokens(query_tokens)  # (B, T, D)
        mean, present = masked_mean(emb, query_tokens > 0)  # (B, D), (B,)
        if self.no_query_is_output:
            out = self.fuse_text(self.norm(mean), query_text_emb, present)
            if self.proj is not None:
                out = self.proj(out)
            return torch.where(present.unsqueeze(-1), out, self.no_query.expand_as(out))
        out = self.norm(torch.where(present.unsqueeze(-1), mean, self.no_query.expand_as(mean)))
        out = self.fuse_text(out, query_text_emb, present)
        return self.proj(out) if self.proj is not None else out


class ItemEncoder(nn.Module):
    """item_index (B,) int64 -> item_emb (B, D): gate-weighted sum of projected modalities.

    The gate is a learned logit per modality, softmaxed per item over the modalities that item
    actually has (PAD has none and encodes to zeros; OOV has only its learned id row).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.modalities = config.item_modalities
        dim, n = config.dim, config.num_items
        self.id_table = nn.Embedding(n, dim, padding_idx=0)
        nn.init.normal_(self.id_table.weight, std=0.1)
        with torch.no_grad():
            self.id_table.weight[0].zero_()
        if Modality.TEXT in self.modalities:
            self.register_buffer("item_text", torch.zeros(n, config.text_dim))
            # Which rows have text (a zero row = missing), kept beside the features so the
            # forward pass does not rescan all F columns.
            self.register_buffer("item_has_text", torch.zeros(n, dtype=torch.bool))
            self.text_proj = nn.Linear(config.text_dim, dim, bias=False)
        if Modality.ATTR in self.modalities:
            self.register_buffer(
                "item_attrs", torch.zeros(n, config.attrs_per_item, dtype=torch.long)
            )
            self.attr_table = nn.Embedding(config.num_attrs, dim, padding_idx=0)
            nn.init.normal_(self.attr_table.weight, std=0.1)
            with torch.no_grad():
                self.attr_table.weight[0].zero_()
        if Modality.IMAGE in self.modalities:
            self.register_buffer("item_image", torch.zeros(n, config.image_dim))
            self.register_buffer("item_has_image", torch.zeros(n, dtype=torch.bool))
            self.image_proj = nn.Linear(config.image_dim, dim, bias=False)
        self.norms = nn.ModuleDict({m.value: nn.LayerNorm(dim) for m in self.modalities})
        self.gate_logits = nn.Parameter(torch.zeros(len(self.modalities)))
        self.proj = (
            nn.ModuleDict({m.value: IdentityInitLinear(dim) for m in self.modalities})
            if config.projections
            else None
        )

    def load_features(
        self,
        item_text: np.ndarray | None = None,
        item_attrs: np.ndarray | None = None,
        item_image: np.ndarray | None = None,
    ) -> None:
        """Copy frozen per-item features (I+2 rows each) into the buffers of the modalities
        this encoder has; a zero text or image row means the item lacks that modality."""
        with torch.no_grad():
            if hasattr(self, "item_text") and item_text is not None:
                self.item_text.copy_(torch.as_tensor(np.array(item_text), dtype=torch.float32))
                self.item_has_text.copy_(self.item_text.abs().sum(-1) > 0)
            if hasattr(self, "item_attrs") and item_attrs is not None:
                self.item_attrs.copy_(torch.as_tensor(np.array(item_attrs), dtype=torch.long))
            if hasattr(self, "item_image") and item_image is not None:
                self.item_image.copy_(torch.as_tensor(np.array(item_image), dtype=torch.float32))
                self.item_has_image.copy_(self.item_image.abs().sum(-1) > 0)

    def raw_modalities(self, item_index: Tensor) -> dict[Modality, tuple[Tensor, Tensor]]:
        """Per modality: the embedding before G (B, D) and whether the item has it (B,)."""
        out: dict[Modality, tuple[Tensor, Tensor]] = {}
        out[Modality.ID] = (self.id_table(item_index), item_index > 0)
        if Modality.TEXT in self.modalities:
            feats = self.item_text[item_index]  # (B, F)
            out[Modality.TEXT] = (self.text_proj(feats), self.item_has_text[item_index])
        if Modality.ATTR in self.modalities:
            attrs = self.item_attrs[item_index]  # (B, A)
            out[Modality.ATTR] = masked_mean(
                self.attr_table(attrs), attrs > 0
            )  # (B, A, D) -> (B, D)
        if Modality.IMAGE in self.modalities:
            feats = self.item_image[item_index]  # (B, F)
            out[Modality.IMAGE] = (self.image_proj(feats), self.item_has_image[item_index])
        # Per-modality LayerNorm puts lookups and projected dense features on one scale, so
        # the gate mixes comparable vectors and the ESU's bilinear terms train at a useful rate
        # (without it the history pathway stays near zero and the model learns popularity only).
        return {m: (self.norms[m.value](emb), has) for m, (emb, has) in out.items()}

    def components(self, item_index: Tensor) -> dict[Modality, Tensor]:
        """Per modality g_m * G_m e_m (B, D); their sum is the item embedding."""
        raw = self.raw_modalities(item_index)
        present = torch.stack([raw[m][1] for m in self.modalities], dim=-1)  # (B, M)
        # -1e9 instead of -inf: an item with no modality (PAD) gets weights 0, not NaN.
        logits = self.gate_logits.expand(present.shape).masked_fill(~present, -1e9)
        gate = torch.softmax(logits, dim=-1) * present.to(logits.dtype)  # (B, M)
        out: dict[Modality, Tensor] = {}
        for j, m in enumerate(self.modalities):
            emb = raw[m][0]
            if self.proj is not None:
                emb = self.proj[m.value](emb)
            out[m] = gate[:, j : j + 1] * emb
        return out

    def forward(self, item_index: Tensor) -> Tensor:
        parts = self.components(item_index)
        return torch.stack(list(parts.values()), dim=0).sum(dim=0)  # (M, B, D) -> (B, D)
