"""Typed training configuration: every trainer default lives in TrainConfig."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from seminar.model.psu import PSUConfig


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    epochs: int = 3  # fine-tuning epochs (upper bound: early stopping on valid NDCG@10)
    pretrain: bool = True  # PSU pretraining (SEMINAR only; other kinds ignore it)
    pretrain_epochs: int = 1
    batch_size: int = 256  # global batch: split evenly over DDP ranks
    negatives: int = 4  # sampled negative items per target (BCE)
    lr: float = 2e-3
    weight_decay: float = 0.0
    patience: int = 1  # epochs without a better valid NDCG@10 before stopping
    align_weight: float = 1.0
    next_weight: float = 1.0
    relevance_weight: float = 1.0
    tau: float = 0.05
    # Fine-tuning BCE weight of a target clicked under a search query, relative to a
    # recommendation target (1 = every target alike). Search targets are ~7% of MovieLens';
    # at 3 the query moves the ranking further with no measurable cost to recommendation.
    search_weight: float = 3.0
    # A seeded subsample of the training targets (0 = all ~51k on MovieLens): sized so one
    # model trains and evaluates in a few minutes on 2 cores.
    max_train_targets: int = 20_000
    eval_max_history: int = 0  # 0 = the full lifelong history at evaluation
    eval_users: int = 0  # 0 = every evaluated user; >0 = the first N (quick validation)
    # torch intra-op threads; 0 = torch's default (all cores). On a machine shared with other
    # jobs use 1: spinning OpenMP workers of oversubscribed processes cost 10x in wall time.
    threads: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        positive = ("epochs", "batch_size", "negatives")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        non_negative = (
            "pretrain_epochs", "patience", "max_train_targets", "eval_max_history",
            "eval_users", "threads",
        )  # fmt: skip
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.search_weight <= 0:
            raise ValueError(f"TrainConfig.search_weight must be > 0, got {self.search_weight}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        self.psu()  # validates the PSU weights and tau

    def psu(self) -> PSUConfig:
        return PSUConfig(
            align_weight=self.align_weight,
            next_weight=self.next_weight,
            relevance_weight=self.relevance_weight,
            tau=self.tau,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"TrainConfig has no field(s) {', '.join(unknown)}")
        return cls(**raw)

    def override(self, **changes: Any) -> TrainConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# `--quick`: a small configuration for tests and the demo (minutes, not tens of minutes).
QUICK_TRAIN = {"epochs": 2, "pretrain_epochs": 1, "max_train_targets": 8_000}
QUICK_MODEL = {"dim": 32, "top_k": 20, "max_history": 64}
