"""Planted truth through the real Triton ensemble: a topic query must change the served ranking.

The SYNTHETIC dataset plants query intent (a search event's query is 1-3 words of its clicked
item's topic; items' text is drawn from their topic's words), so a model that reads the query
must put more of that topic's items into the top 10 when a topic query is typed. The query
strings sent here are new combinations of a topic's words (never a query of the dataset), so
they reach the model only through the served `query_text` step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seminar.data.dataset import PreparedDataset
from seminar.data.synthetic import PlantedTopics
from seminar.serving.client import score
from tests.support.build import build_cli
from tests.support.serving import start_triton
from tests.support.training import train_tiny

pytestmark = [pytest.mark.slow, pytest.mark.serving]

USERS_PER_TOPIC = 8
CANDIDATES = 100
TOP = 10


@pytest.fixture(scope="module")
def planted_repo(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SEMINAR trained on the planted SYNTHETIC data, built into its own repository."""
    root = tmp_path_factory.mktemp("planted")
    run = root / "run"
    train_tiny(synthetic_data, run)
    repo = root / "model_repository"
    result = build_cli(run, repo, 1, "--data", str(synthetic_data))
    assert result.exit_code == 0, result.output
    return repo


def _unseen_topic_query(planted: PlantedTopics, dataset: PreparedDataset, topic: int) -> str:
    """Words of `topic` in an order no search event of the dataset used."""
    seen = set(dataset.queries)
    words = planted.words[topic]
    for first in range(len(words)):
        for second in range(len(words)):
            query = f"{words[second]} {words[first]}"
            if first != second and query not in seen:
                return query
    raise AssertionError(f"every pair of topic {topic}'s words is a dataset query")


def test_a_topic_query_at_least_doubles_its_topic_in_the_served_top_10(
    planted_repo: Path, synthetic_data: Path
) -> None:
    import tritonclient.grpc as grpcclient

    dataset = PreparedDataset.load(synthetic_data)
    planted = PlantedTopics.load(synthetic_data)
    item_indices = np.arange(2, len(dataset.item_ids) + 2)
    rng = np.random.default_rng(0)
    with_query, without_query = [], []
    with start_triton(planted_repo) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        for topic in range(planted.topics):
            query = _unseen_topic_query(planted, dataset, topic)
            for user in rng.choice(np.asarray(dataset.user_ids), USERS_PER_TOPIC, replace=False):
                candidates = rng.choice(item_indices, CANDIDATES, replace=False)
                item_ids = np.asarray(dataset.item_ids)[candidates - 2]
                for typed, shares in ((query, with_query), ("", without_query)):
                    scores = score(client, int(user), typed, item_ids)
                    top = candidates[np.argsort(-scores, kind="stable")[:TOP]]
                    shares.append(planted.topic_share(topic, top))
    with_share, without_share = float(np.mean(with_query)), float(np.mean(without_query))
    print(f"topic share of the served top {TOP}: {with_share:.3f} with the query, "
          f"{without_share:.3f} without, over {len(with_query)} requests")  # fmt: skip
    assert with_share >= 2 * without_share, (with_share, without_share)
