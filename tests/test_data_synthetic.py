"""SYNTHETIC generator: planted truth is recoverable, output is deterministic and chunk-free."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seminar.data.dataset import PreparedDataset
from seminar.data.prepare import PrepareConfig
from seminar.data.synthetic import (
    PlantedTopics,
    SyntheticConfig,
    lifelong_user,
    lifelong_user_for,
    load_planted,
    nearest_centroid_accuracy,
    prepare_synthetic,
)
from tests.support.data import SYNTHETIC_SMALL


def _kmeans_purity(x: np.ndarray, labels: np.ndarray, k: int) -> float:
    from sklearn.cluster import KMeans

    clusters = KMeans(n_clusters=k, n_init=4, random_state=0).fit_predict(x)
    return sum(np.bincount(labels[clusters == c]).max() for c in np.unique(clusters)) / len(labels)


def test_planted_topics_are_recoverable_from_minilm_text_embeddings(synthetic_data: Path) -> None:
    ds = PreparedDataset.load(synthetic_data)
    topic = load_planted(synthetic_data)["item_topic"][2:]
    text = np.asarray(ds.item_text_emb[2:])  # (I, 384) MiniLM of the generated item texts
    chance = 1 / SYNTHETIC_SMALL["topics"]
    assert nearest_centroid_accuracy(text, topic) > 0.8 > 4 * chance
    assert _kmeans_purity(text, topic, SYNTHETIC_SMALL["topics"]) > 0.7


def test_synthetic_image_embeddings_and_attributes_follow_topics(synthetic_data: Path) -> None:
    ds = PreparedDataset.load(synthetic_data)
    topic = load_planted(synthetic_data)["item_topic"][2:]
    assert ds.item_image_emb.shape == (ds.n_item_rows, SYNTHETIC_SMALL["image_dim"])
    assert nearest_centroid_accuracy(np.asarray(ds.item_image_emb[2:]), topic) > 0.8
    category = np.array(
        [int(ds.attributes[row[0]].split("=c")[1]) for row in ds.item_attrs[2:]]
    )  # category= is the first attribute of every synthetic item
    assert (category == topic).mean() > 0.75  # planted at 0.85 (+ 1/T by chance)


def test_users_behave_as_their_planted_interests(synthetic_data: Path) -> None:
    ds = PreparedDataset.load(synthetic_data)
    planted = load_planted(synthetic_data)
    mixture, item_topic = planted["user_mixture"], planted["item_topic"]
    t = mixture.shape[1]
    topic = item_topic[ds.seq_item]  # (N,) topic of each event's item
    assert (topic >= 0).all()
    counts = np.zeros((ds.n_users, t))
    np.add.at(counts, (ds.event_user, topic), 1)
    empirical = counts / counts.sum(axis=1, keepdims=True)
    # Each user's topic histogram is close (total variation) to its own planted mixture, with
    # the uniform exploration share mixed in, and far from another user's mixture.
    explore = ds.meta["planted"]["config"]["explore"]
    expected = (1 - explore) * mixture + explore / t
    own = 0.5 * np.abs(empirical - expected).sum(axis=1)
    other = 0.5 * np.abs(empirical - np.roll(expected, 1, axis=0)).sum(axis=1)
    assert np.median(own) < 0.1 and np.median(other) > 0.4
    # Labels follow interest: positives concentrate on high-interest topics.
    interest = mixture[ds.event_user, topic] / mixture.max(axis=1)[ds.event_user]
    label = np.asarray(ds.seq_label)
    assert interest[label == 1].mean() > interest[label == 0].mean() + 0.3
    # Search queries come from the same topic as the item.
    search = ds.seq_query > 0
    assert search.mean() == pytest.approx(0.25, abs=0.03)
    assert (planted["query_topic"][ds.seq_query[search]] == topic[search]).all()


def test_search_queries_are_one_to_three_words_of_their_items_topic(synthetic_data: Path) -> None:
    """The planted query intent: a search event's query names its clicked item's topic."""
    ds = PreparedDataset.load(synthetic_data)
    planted = PlantedTopics.load(synthetic_data)
    assert planted.topics == SYNTHETIC_SMALL["topics"]
    owners = {word: z for z, words in enumerate(planted.words) for word in words}
    assert len(owners) == sum(map(len, planted.words))  # no word belongs to two topics
    search = np.flatnonzero(np.asarray(ds.seq_query) > 0)
    item_topic = planted.item_topic[np.asarray(ds.seq_item)[search]]
    sizes = set()
    for query, topic in zip(np.asarray(ds.seq_query)[search], item_topic, strict=True):
        words = ds.queries[query].split()
        sizes.add(len(words))
        assert {owners[word] for word in words} == {int(topic)}, (ds.queries[query], topic)
    assert sizes == {1, 2, 3}
    # What a planted-truth test needs: each topic's items and queries, and a top list's share.
    for topic in range(planted.topics):
        items = planted.items_of(topic)
        assert len(items) and (items >= 2).all()
        assert planted.topic_share(topic, items) == 1.0
        for query in planted.queries_of(topic):
            assert set(ds.queries[query].split()) <= set(planted.words[topic])
    everything = np.arange(2, ds.n_item_rows)
    assert planted.topic_share(0, everything) == pytest.approx(1 / planted.topics, abs=0.05)


def test_min_and_max_events_bound_every_user(tmp_path: Path) -> None:
    config = SyntheticConfig(users=300, events_per_user=6, items=200, topics=4, min_events=3,
                             max_events=10, image_dim=0)  # fmt: skip
    out = tmp_path / "short"
    prepare_synthetic(config, out, PrepareConfig(text_features=False, progress=False))
    events = np.diff(PreparedDataset.load(out).seq_offsets)
    assert events.min() == 3 and events.max() == 10 and np.median(events) == pytest.approx(6, abs=1)


def test_meta_labels_the_dataset_synthetic(synthetic_data: Path) -> None:
    ds = PreparedDataset.load(synthetic_data)
    assert ds.synthetic and ds.meta["planted"]["label"] == "SYNTHETIC"
    assert ds.meta["planted"]["config"]["topics"] == SYNTHETIC_SMALL["topics"]
    assert ds.meta["image"].startswith("synthetic")
    assert ds.n_users == SYNTHETIC_SMALL["users"]
    assert abs(ds.meta["stats"]["events"] / ds.n_users - SYNTHETIC_SMALL["events_per_user"]) < 40


@pytest.mark.slow
def test_same_seed_same_files_regardless_of_chunking(synthetic_data: Path, tmp_path: Path) -> None:
    config = SyntheticConfig(**SYNTHETIC_SMALL)
    out = tmp_path / "small_chunks"
    # 997-event chunks: many chunk boundaries, same bytes as the fixture's single chunk.
    prepare_synthetic(config, out, PrepareConfig(seed=config.seed, chunk_rows=997, progress=False))
    skip = {"meta.json"}
    ours = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file() and p.name not in skip)
    theirs = sorted(
        p.relative_to(synthetic_data)
        for p in synthetic_data.rglob("*")
        if p.is_file() and p.name not in skip
    )
    assert ours == theirs
    for rel in ours:
        if rel.name != "events.parquet":  # row-group layout differs with the chunking
            assert (out / rel).read_bytes() == (synthetic_data / rel).read_bytes(), rel
    a, b = PreparedDataset.load(out), PreparedDataset.load(synthetic_data)
    assert a.events_table().equals(b.events_table())

    other = tmp_path / "other_seed"
    config = SyntheticConfig(**{**SYNTHETIC_SMALL, "seed": 8})
    prepare_synthetic(config, other, PrepareConfig(seed=8, text_features=False, progress=False))
    c = PreparedDataset.load(other)
    n = min(c.n_events, b.n_events)
    assert (c.seq_item[:n] != b.seq_item[:n]).mean() > 0.9


def test_lifelong_user_is_long_topical_and_seeded(synthetic_data: Path) -> None:
    ds = PreparedDataset.load(synthetic_data)
    user = lifelong_user_for(ds, 20_000, seed=3)
    assert len(user) == 20_000 and user.synthetic
    planted = load_planted(synthetic_data)
    assert (planted["item_topic"][user.item] == user.topic).all()
    assert (user.item >= 2).all() and (user.item < ds.n_item_rows).all()
    assert (np.diff(user.time) >= 0).all()
    search = user.query > 0
    assert (planted["query_topic"][user.query[search]] == user.topic[search]).all()
    again = lifelong_user_for(ds, 20_000, seed=3)
    assert np.array_equal(again.item, user.item) and np.array_equal(again.label, user.label)


def test_lifelong_user_over_movielens_uses_genres(movielens_data: Path) -> None:
    ds = PreparedDataset.load(movielens_data)
    user = lifelong_user_for(ds, 10_000, seed=0)
    assert len(user) == 10_000 and (user.item >= 2).all() and (user.item < ds.n_item_rows).all()
    assert ((user.query > 0).mean()) == pytest.approx(0.25, abs=0.03)
    assert (user.query < ds.n_queries).all()


def test_lifelong_user_without_queries_is_rec_only() -> None:
    user = lifelong_user(5000, np.array([-1, -1, 0, 0, 1, 1, 2]), seed=1)
    assert (user.query == 0).all() and set(user.item.tolist()) <= {2, 3, 4, 5, 6}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("users", 0),
        ("items", 3),
        ("search_fraction", 1.5),
        ("concentration", 0.0),
        ("image_dim", -1),
        ("max_events", 2),
        ("max_query_words", 13),
        ("queries_per_topic", 1000),
    ],
)
def test_synthetic_config_names_the_bad_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field if field != "items" else "items"):
        SyntheticConfig(**{**SYNTHETIC_SMALL, field: value})


def test_cli_rejects_a_bad_synthetic_config(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from seminar.data.cli import app

    out = tmp_path / "synth"
    result = CliRunner().invoke(app, ["prepare", "synthetic", "--out", str(out), "--users", "0"])
    assert result.exit_code == 2
    assert "users must be >= 1" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
