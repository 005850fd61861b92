"""PSU: the Pretraining Search Unit's three objectives (docs/model.md, "PSU").

1. alignment: symmetric InfoNCE between every pair of item modalities an item has, in-batch
   items, one-hot diagonal targets, temperature tau (padding and missing modalities excluded);
2. next pair: from the history plus a learned EOS event, score the true next (query, item) pair
   against sampled negative items with the downstream retrieval + attention scorer (BCE);
3. relevance: InfoNCE between a search query and the item clicked under it (search events only),
   in-batch negatives. Minimising it pulls each query towards its own item.

After pretraining the fine-tuned model starts from `transferable_state(psu.model)`: the embedding
tables and modality projections; G, GSU/ESU and scorer start fresh.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional

from seminar.model.config import Modality
from seminar.model.seminar import SeminarModel


@dataclass(frozen=True)
class PSUConfig:
    align_weight: float = 1.0
    next_weight: float = 1.0
    relevance_weight: float = 1.0
    tau: float = 0.05

    def __post_init__(self) -> None:
        for name in ("align_weight", "next_weight", "relevance_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"PSUConfig.{name} must be >= 0 (0 switches it off)")
        if self.tau <= 0:
            raise ValueError(f"PSUConfig.tau must be > 0, got {self.tau}")


def info_nce(a: Tensor, b: Tensor, tau: float) -> Tensor:
    """Symmetric InfoNCE of matched rows a[i] <-> b[i] (N, D); low when each row finds its match."""
    a, b = functional.normalize(a, dim=-1), functional.normalize(b, dim=-1)
    logits = a @ b.T / tau  # (N, N)
    target = torch.arange(len(a), device=a.device)  # one-hot diagonal
    return 0.5 * (
        functional.cross_entropy(logits, target) + functional.cross_entropy(logits.T, target)
    )


def modality_alignment(raw: Mapping[Modality, tuple[Tensor, Tensor]], tau: float) -> Tensor:
    """Mean InfoNCE over every pair of modalities: raw[m] = (embeddings (N, D), whether each
    of the N distinct items has m (N,)); only items having both modalities of a pair count."""
    losses = []
    for m1, m2 in itertools.combinations(list(raw), 2):
        both = raw[m1][1] & raw[m2][1]  # (N,) items having both modalities
        if int(both.sum()) >= 2:
            losses.append(info_nce(raw[m1][0][both], raw[m2][0][both], tau))
    if not losses:
        return next(iter(raw.values()))[0].new_zeros(())
    return torch.stack(losses).mean()


def alignment_loss(model: SeminarModel, items: Tensor, tau: float) -> Tensor:
    """Mean InfoNCE over every pair of modalities, on the distinct real items of `items`."""
    items = torch.unique(items[items > 1])  # drop PAD/OOV; duplicates would be false negatives
    return modality_alignment(model.item_encoder.raw_modalities(items), tau)


def relevance_loss(model: SeminarModel, query: Tensor, item: Tensor, tau: float) -> Tensor:
    """InfoNCE query <-> clicked item over the search events (query > 0) of the batch."""
    search = query > 0
    if int(search.sum()) < 2:
        return query.new_zeros((), dtype=torch.float32)
    q_emb = model.encode_queries(query[search])  # (S, D)
    i_emb = model.item_encoder(item[search])  # (S, D)
    return info_nce(q_emb, i_emb, tau)


class PSU(nn.Module):
    """Pretraining wrapper: the downstream model plus a learned EOS event."""

    def __init__(self, model: SeminarModel, config: PSUConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.eos = nn.Parameter(torch.randn(model.config.dim) * 0.1)
        if model.config.projections:
            # G maps the pretrained space into the downstream one, so it is not pretrained.
            for g in (model.query_encoder.proj, model.item_encoder.proj):
                g.requires_grad_(False)

    def forward(
        self,
        target_query: Tensor,  # (B,)
        candidates: Tensor,  # (B, C) positive first
        seq_item: Tensor,  # (B, L)
        seq_query: Tensor,  # (B, L)
        seq_mask: Tensor,  # (B, L)
    ) -> dict[str, Tensor]:
        cfg = self.config
        zero = self.eos.new_zeros(())
        losses = {"align": zero, "next": zero, "relevance": zero}
        if cfg.next_weight > 0:
            eos = self.eos.expand(len(candidates), 1, -1)  # (B, 1, D)
            logits = self.model(
                target_query, candidates, seq_item, seq_query, seq_mask, extra_events=eos
            )
            labels = torch.zeros_like(logits)
            labels[:, 0] = 1.0
            losses["next"] = functional.binary_cross_entropy_with_logits(logits, labels)
        if cfg.align_weight > 0:
            # Targets and sampled negatives: ~B*(1+N) in-batch items, not the whole histories.
            losses["align"] = alignment_loss(self.model, candidates.flatten(), cfg.tau)
        if cfg.relevance_weight > 0:
            losses["relevance"] = relevance_loss(
                self.model, target_query, candidates[:, 0], cfg.tau
            )
        losses["total"] = (
            cfg.align_weight * losses["align"]
            + cfg.next_weight * losses["next"]
            + cfg.relevance_weight * losses["relevance"]
        )
        return losses


def transferable_state(model: SeminarModel) -> dict[str, Tensor]:
    """Embedding tables and modality projections (not G, GSU/ESU or scorer) to restore."""
    return {
        name: value.detach().clone()
        for name, value in model.state_dict().items()
        if name.split(".")[0] in ("query_encoder", "item_encoder") and name.split(".")[1] != "proj"
    }
