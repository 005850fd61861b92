"""Fixtures for the data tests (owned by that area); other areas build on them.

Both datasets are prepared once per pytest session through the same functions the CLI calls.
MiniLM features are cached on disk ($SEMINAR_CACHE_DIR or ~/.cache/seminar), so only a cold
machine pays the ~20 s of embedding the MovieLens texts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MOVIELENS_SOURCE = REPO / "datasets" / "movielens" / "ml-latest-small"

# Small SYNTHETIC dataset: ~200 users x ~200 events, 8 planted topics, image embeddings.
SYNTHETIC_SMALL = {
    "users": 200,
    "events_per_user": 200,
    "items": 400,
    "topics": 8,
    "seed": 7,
    "image_dim": 32,
}


@pytest.fixture(scope="session")
def movielens_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared MovieLens ml-latest-small (repo copy), MiniLM features included."""
    from seminar.data.movielens import prepare_movielens
    from seminar.data.prepare import PrepareConfig

    out = tmp_path_factory.mktemp("data") / "movielens"
    prepare_movielens(MOVIELENS_SOURCE, out, PrepareConfig(progress=False))
    return out


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared small SYNTHETIC dataset with planted topics and synthetic image embeddings."""
    from seminar.data.prepare import PrepareConfig
    from seminar.data.synthetic import SyntheticConfig, prepare_synthetic

    out = tmp_path_factory.mktemp("data") / "synthetic"
    config = SyntheticConfig(**SYNTHETIC_SMALL)
    prepare_synthetic(config, out, PrepareConfig(seed=config.seed, progress=False))
    return out
