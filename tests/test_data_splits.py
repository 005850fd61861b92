"""Evaluation split invariants and determinism, on the prepared MovieLens data."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from seminar.data.dataset import PreparedDataset
from seminar.data.movielens import prepare_movielens
from seminar.data.prepare import PrepareConfig
from seminar.data.splits import SplitConfig, sample_negatives
from tests.support.data import MOVIELENS_SOURCE


def test_targets_are_the_last_two_positives(movielens_data: Path) -> None:
    ds = PreparedDataset.load(movielens_data)
    for u in range(ds.n_users):
        start, stop = ds.user_span(u)
        positives = start + np.flatnonzero(ds.seq_label[start:stop] == 1)
        if len(positives) < 3:
            assert ds.test_pos[u] == ds.valid_pos[u] == -1
            assert not ds.test_negatives[u].any()
            continue
        assert ds.test_pos[u] == positives[-1]
        assert ds.valid_pos[u] == positives[-2]
    assert len(ds.evaluated_users()) == ds.meta["stats"]["evaluated_users"] > 600


def test_history_is_strictly_before_the_target(movielens_data: Path) -> None:
    ds = PreparedDataset.load(movielens_data)
    for u in ds.evaluated_users()[:50]:
        target = int(ds.test_pos[u])
        h = ds.history(u, before=target)
        assert h.start + len(h) == target  # everything before, nothing from the target on
        assert (h.time <= ds.seq_time[target]).all()
        assert (h.label == 0).any() or len(h) == (h.label == 1).sum()  # negatives stay in
    with pytest.raises(IndexError):
        ds.history(0, before=ds.user_span(1)[1])


def test_train_targets_stop_before_validation(movielens_data: Path) -> None:
    ds = PreparedDataset.load(movielens_data)
    train = ds.train_positions()
    assert (ds.seq_label[train] == 1).all()
    users = ds.event_user[train]
    evaluated = ds.valid_pos[users] >= 0
    assert (train[evaluated] < ds.valid_pos[users[evaluated]]).all()


def test_negatives_were_never_interacted_with(movielens_data: Path) -> None:
    ds = PreparedDataset.load(movielens_data)
    for u in ds.evaluated_users():
        start, stop = ds.user_span(u)
        seen = set(ds.seq_item[start:stop].tolist())
        for negatives in (ds.test_negatives[u], ds.valid_negatives[u]):
            assert len(negatives) == 99 and len(set(negatives.tolist())) == 99
            assert negatives.min() >= 2 and negatives.max() < ds.n_item_rows
            assert not seen.intersection(negatives.tolist())


def _array_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((path / "arrays").iterdir())}


@pytest.mark.slow
def test_same_seed_same_files_other_seed_other_negatives(
    movielens_data: Path, tmp_path: Path
) -> None:
    again = tmp_path / "again"
    prepare_movielens(MOVIELENS_SOURCE, again, PrepareConfig(progress=False))
    assert _array_bytes(again) == _array_bytes(movielens_data)
    for name in ("events.parquet", "items.parquet"):
        assert (again / name).read_bytes() == (movielens_data / name).read_bytes()
    assert PreparedDataset.load(again).checksum == PreparedDataset.load(movielens_data).checksum

    other = tmp_path / "other"
    prepare_movielens(MOVIELENS_SOURCE, other, PrepareConfig(seed=1, progress=False))
    a, b = PreparedDataset.load(movielens_data), PreparedDataset.load(other)
    assert np.array_equal(a.test_pos, b.test_pos)  # targets do not depend on the seed
    assert not np.array_equal(a.test_negatives, b.test_negatives)
    assert (a.test_negatives != b.test_negatives).mean() > 0.9


def test_sample_negatives_small_catalog_and_too_small() -> None:
    rng = np.random.default_rng(0)
    interacted = np.arange(2, 12)
    got = sample_negatives(rng, interacted, n_item_rows=12 + 99, k=99)  # exactly 99 left
    assert sorted(got.tolist()) == list(range(12, 111))
    assert sample_negatives(rng, interacted, n_item_rows=12 + 98, k=99) is None


def test_split_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="negatives"):
        SplitConfig(negatives=0)
    with pytest.raises(ValueError, match="min_positives"):
        SplitConfig(min_positives=1)


@pytest.mark.parametrize("chunk_rows", [1, 7, 50, 10_000])
def test_user_chunks_cover_every_user_whole(chunk_rows: int) -> None:
    from seminar.data.prepare import user_chunks

    counts = np.array([3, 40, 1, 1, 25, 9, 60, 2])
    offsets = np.concatenate([[0], np.cumsum(counts)])
    spans = list(user_chunks(offsets, chunk_rows))
    assert spans[0][0] == 0 and spans[-1][1] == offsets[-1]
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert all(start in offsets and stop in offsets for start, stop in spans)  # whole users
    assert all(stop - start <= max(chunk_rows, counts.max()) for start, stop in spans)
