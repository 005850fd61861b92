"""Typed model configuration: every architecture default lives here.

Shape letters used across seminar.model:
    B batch rows, C candidates per row, L history length, H heads, K top-K per head,
    D hidden size, T query tokens, A attributes per item, F frozen feature width.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from enum import StrEnum, unique
from typing import Any


@unique
class ModelKind(StrEnum):
    """Which model the shared harness builds; they differ only in retrieval, G and pretraining."""

    SEMINAR = "seminar"  # TWIN-style per-head GSU + G projections + PSU pretraining
    TWIN = "twin"  # per-head GSU/ESU, no G, no pretraining
    SIM = "sim"  # soft search: top-K by inner product with the target pair
    ETA = "eta"  # SimHash LSH: top-K by Hamming distance to the target pair
    DIN = "din"  # attention over the K most recent events


@unique
class Modality(StrEnum):
    """Item modalities; the query is its own modality and always present."""

    ID = "id"
    TEXT = "text"
    ATTR = "attr"
    IMAGE = "image"


@dataclass(frozen=True)
class ModelConfig:
    """Architecture plus the vocabulary sizes it was built for (read from the dataset).

    The vocabulary fields make a checkpoint rebuild its model with no flags.
    """

    kind: ModelKind = ModelKind.SEMINAR
    dim: int = 64  # D
    heads: int = 4  # H
    top_k: int = 50  # K per head
    alpha: float = 0.5  # pair = alpha * query + (1 - alpha) * item
    max_history: int = 128  # most recent events fed to the GSU while training (eval/score: all)
    use_text: bool = True
    use_attr: bool = True
    use_image: bool = True  # only takes effect when the dataset has image features
    # The query's frozen MiniLM embedding fused into the query encoder (off: tokens only, the
    # text input is ignored). Off by default when reading a run saved before it existed.
    use_query_text: bool = True
    # Explicit query-item relevance features in the ranking head (cosine and elementwise
    # product of query_emb and item_emb), zero for rows without a query.
    query_relevance: bool = True
    mlp_hidden: tuple[int, ...] = (128, 64)
    simhash_bits: int = 32  # ETA only
    simhash_seed: int = 7  # ETA only: the random hyperplanes are a fixed buffer
    # Dataset vocabulary, filled by `ModelConfig.for_dataset`.
    num_items: int = 2  # I + 2 (0 = PAD, 1 = OOV)
    num_queries: int = 1  # Q (0 = no query)
    num_tokens: int = 2  # word vocabulary (0 = <pad>, 1 = <unk>)
    query_len: int = 8  # T
    num_attrs: int = 1  # attribute vocabulary (0 = <pad>)
    attrs_per_item: int = 1  # A
    text_dim: int = 384  # F of the frozen MiniLM features
    image_dim: int = 0  # 0 = the dataset has no image modality

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", ModelKind(self.kind))
        except ValueError:
            choices = ", ".join(k.value for k in ModelKind)
            raise ValueError(
                f"ModelConfig.kind must be one of {choices}, got {self.kind!r}"
            ) from None
        object.__setattr__(self, "mlp_hidden", tuple(int(h) for h in self.mlp_hidden))
        positive = ("dim", "heads", "top_k", "max_history", "simhash_bits", "query_len")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"ModelConfig.alpha must be in [0, 1], got {self.alpha}")
        if any(h < 1 for h in self.mlp_hidden):
            raise ValueError(
                f"ModelConfig.mlp_hidden must be positive widths, got {self.mlp_hidden}"
            )
        minimum = {"num_items": 2, "num_queries": 1, "num_tokens": 2, "num_attrs": 1}
        for name, low in minimum.items():
            if getattr(self, name) < low:
                raise ValueError(f"ModelConfig.{name} must be >= {low}, got {getattr(self, name)}")
        if self.attrs_per_item < 1 or self.text_dim < 1 or self.image_dim < 0:
            raise ValueError("ModelConfig.attrs_per_item/text_dim must be >= 1, image_dim >= 0")

    @property
    def projections(self) -> bool:
        """Per-modality G projections exist only in SEMINAR."""
        return self.kind is ModelKind.SEMINAR

    @property
    def pretrain(self) -> bool:
        """Only SEMINAR is PSU-pretrained (the trainer may still switch it off)."""
        return self.kind is ModelKind.SEMINAR

    @property
    def item_modalities(self) -> tuple[Modality, ...]:
        present = [Modality.ID]
        if self.use_text:
            present.append(Modality.TEXT)
        if self.use_attr:
            present.append(Modality.ATTR)
        if self.use_image and self.image_dim > 0:
            present.append(Modality.IMAGE)
        return tuple(present)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["kind"] = self.kind.value
        out["mlp_hidden"] = list(self.mlp_hidden)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"ModelConfig has no field(s) {', '.join(unknown)}")
        # A config written before a feature existed describes a model without it.
        return cls(**{**LEGACY_DEFAULTS, **raw})


# Fields added after run directories were first written, with the value that rebuilds the
# model those older runs were trained as.
LEGACY_DEFAULTS: dict[str, Any] = {"use_query_text": False, "query_relevance": False}


@dataclass(frozen=True)
class ImageTowerConfig:
    """The small CNN that turns a preprocessed item image into the image modality's vector.

    It is trained at prepare time with the PSU alignment loss (image against the item's text,
    id and attributes), small enough to train in seconds on one core.
    """

    dim: int = 32  # F of the image modality: the tower's output
    width: int = 16  # channels of the first convolution (doubled by each of the next two)
    align_dim: int = 32  # the shared space the alignment compares modalities in
    epochs: int = 12
    batch_size: int = 128
    lr: float = 3e-3
    tau: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("dim", "width", "align_dim", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ImageTowerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError("ImageTowerConfig.batch_size must be >= 2 (in-batch negatives)")
        if self.lr <= 0 or self.tau <= 0:
            raise ValueError("ImageTowerConfig.lr and tau must be > 0")
