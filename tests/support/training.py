"""Fixtures for the training tests (owned by that area); build/ and serving build on them.

`quick_run` is a real SEMINAR run (PSU pretraining + fine-tuning) on prepared MovieLens, made
tiny so the whole session pays well under a minute for it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# Tiny but complete: every modality, pretraining with all three losses, 2 heads, K = 8.
TINY_MODEL = {"dim": 16, "heads": 2, "top_k": 8, "max_history": 32, "mlp_hidden": (32,)}
TINY_TRAIN = {
    "epochs": 1,
    "pretrain_epochs": 1,
    "batch_size": 128,
    "lr": 0.01,  # 16 steps must be enough to beat chance clearly
    "max_train_targets": 2048,
    "eval_users": 64,
    "threads": 1,  # CI runs other areas' tests beside these: one thread avoids oversubscription
    "progress": False,
}


def train_tiny(
    data: Path, out: Path, kind: str = "seminar", resume: bool = False, **train: object
) -> dict:
    from seminar.training.config import TrainConfig
    from seminar.training.trainer import train_run

    config = TrainConfig(**{**TINY_TRAIN, **train})
    return train_run(data, out, kind, config, dict(TINY_MODEL), resume=resume)


@pytest.fixture(scope="session")
def quick_run(movielens_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run directory of a tiny SEMINAR model trained on `movielens_data` (checkpoint, config)."""
    out = tmp_path_factory.mktemp("runs") / "seminar-quick"
    train_tiny(movielens_data, out)
    return out
