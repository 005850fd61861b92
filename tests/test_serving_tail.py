"""Users' online tails in serving (seminar.serving.tail), in-process on the built repository and
a real SQLite file / redis-server: the events recorded after a version was built are scored on
the next request exactly as `seminar score` scores them appended to the history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from seminar.clients.client import rank_via_gateway, record_via_gateway
from seminar.clients.config import Arm
from seminar.clients.metrics import metric_total
from seminar.contract import ENSEMBLE_MODEL, pinned_ensemble_name
from seminar.data.dataset import PreparedDataset
from seminar.errors import DataError
from seminar.events import Event, EventType, Watermark, open_event_log
from seminar.events.redis_server import RedisServer
from seminar.events.tail import DEFAULT_MAX_TAIL_EVENTS, read_tail
from seminar.serving.inprocess import InProcessPipeline
from seminar.serving.tail import OnlineTails
from seminar.serving.triton import ModelControl, TritonConfig, TritonServer
from seminar.training.scoring import score_request
from tests.support.build import BuiltRepo
from tests.support.clients import launch_gateway, make_config, single_version_repo
from tests.support.serving import metrics_once, require_tritonserver

NEW_QUERY = "zebra submarine opera"  # no MovieLens query holds these words together
UNKNOWN_ITEM = 999_999_999
COLD_USER = 987_654_321
TOLERANCE = 1e-4


def short_history_user(data: Path) -> int:
    """A user with a short history: the served PQ GSU is then exact, like `seminar score`'s."""
    ds = PreparedDataset.load(data)
    lengths = np.diff(ds.seq_offsets)
    return int(ds.user_ids[int(np.flatnonzero(lengths >= 5)[np.argmin(lengths[lengths >= 5])])])


def candidates(data: Path, count: int = 20) -> list[int]:
    return [int(i) for i in PreparedDataset.load(data).item_ids[:count]]


def tail_events(user_id: int, items: list[int], prefix: str = "t") -> list[Event]:
    """Search and rec events, a known and a new query, clicked and not, an unknown item."""
    return [
        Event(f"{prefix}1", user_id, items[3], "", EventType.REC, True),
        Event(f"{prefix}2", user_id, items[5], NEW_QUERY, EventType.SEARCH, True),
        Event(f"{prefix}3", user_id, UNKNOWN_ITEM, "comedy", EventType.SEARCH, False),
        Event(f"{prefix}4", user_id, items[7], NEW_QUERY, EventType.SEARCH, True),
        # a recommendation holds no query in a history, whatever the client sent
        Event(f"{prefix}5", user_id, items[9], "ignored words", EventType.REC, False),
    ]


def offline(built: BuiltRepo, user_id: int, query: str, items: list[int], tail) -> np.ndarray:
    scores = score_request(built.run, user_id, query, items, data=built.data, tail=tail)
    return np.asarray(scores, dtype=np.float32)


def pipeline(built: BuiltRepo, url: str, max_events: int = DEFAULT_MAX_TAIL_EVENTS):
    tails = OnlineTails.open(url, built.repo, built.version, max_events)
    return InProcessPipeline.from_repo(built.repo, built.version, tails=tails), tails


@pytest.mark.parametrize("query", ["", NEW_QUERY])
def test_a_recorded_tail_is_scored_as_seminar_score_scores_it_appended(
    model_repo: BuiltRepo, log_url: str, query: str
) -> None:
    user, items = short_history_user(model_repo.data), candidates(model_repo.data)
    served, _ = pipeline(model_repo, log_url)
    before = served.score(user, query, np.asarray(items))
    np.testing.assert_allclose(before, offline(model_repo, user, query, items, ()), atol=TOLERANCE)
    events = tail_events(user, items)
    # Impressions are outcome data, never history: serving's tail must not score them.
    impressions = [
        Event(f"shown{index}", user, item, "", EventType.IMPRESSION, False, position=index + 1)
        for index, item in enumerate(items)
    ]
    with open_event_log(log_url) as log:
        log.append(events[:2] + impressions + events[2:])
    after = served.score(user, query, np.asarray(items))
    np.testing.assert_allclose(
        after, offline(model_repo, user, query, items, events), atol=TOLERANCE
    )
    assert np.abs(after - before).max() > 1e-3, "the recorded events changed nothing"


def test_cold_start_users_get_their_own_tails_in_one_batch(
    model_repo: BuiltRepo, tmp_path: Path
) -> None:
    url = f"sqlite://{tmp_path / 'events.db'}"
    items = candidates(model_repo.data)
    first, second = tail_events(COLD_USER, items, "a"), tail_events(COLD_USER + 1, items, "b")[:1]
    with open_event_log(url) as log:
        log.append(first + second)
    served, _ = pipeline(model_repo, url)
    for user, tail in ((COLD_USER, first), (COLD_USER + 1, second)):
        np.testing.assert_allclose(
            served.score(user, "", np.asarray(items)),
            offline(model_repo, user, "", items, tail),
            atol=TOLERANCE,
        )
    # Both cold-start users (user_index -1) in one batch: each is scored with their own tail.
    retrieval = served.retrieval
    d = retrieval.retriever.codebooks.dim
    generator = torch.Generator().manual_seed(0)
    query_emb, item_emb = (
        torch.randn(4, d, generator=generator),
        torch.randn(4, d, generator=generator),
    )
    users = torch.tensor([-1, -1, -1, -1])
    ids = torch.tensor([COLD_USER, COLD_USER + 1, COLD_USER, COLD_USER + 1])
    batch_emb, batch_mask = retrieval(users, query_emb, item_emb, ids)
    for row in range(4):
        one_emb, one_mask = retrieval(users[row : row + 1], query_emb[row : row + 1],
                                      item_emb[row : row + 1], ids[row : row + 1])  # fmt: skip
        torch.testing.assert_close(batch_emb[row : row + 1], one_emb)
        assert torch.equal(batch_mask[row : row + 1], one_mask)
    assert retrieval.last_tail_lengths == [1]


def test_the_tail_is_capped_to_its_newest_events(model_repo: BuiltRepo, tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'events.db'}"
    user, items = short_history_user(model_repo.data), candidates(model_repo.data)
    events = [
        Event(f"c{index}", user, items[index % len(items)], "", EventType.REC, True)
        for index in range(12)
    ]
    with open_event_log(url) as log:
        log.append(events)
        newest = [stored.event for stored in read_tail(log, user, Watermark(), 3)]
    assert [event.event_id for event in newest] == ["c9", "c10", "c11"]
    served, _ = pipeline(model_repo, url, max_events=3)
    np.testing.assert_allclose(
        served.score(user, "", np.asarray(items)),
        offline(model_repo, user, "", items, newest),
        atol=TOLERANCE,
    )
    assert served.retrieval.last_tail_lengths == [3]


def test_a_log_that_stops_answering_serves_the_stored_sequence_and_counts_it(
    model_repo: BuiltRepo, tmp_path: Path
) -> None:
    pytest.importorskip("redis")
    from tests.support.events import needs_redis_server

    needs_redis_server()
    user, items = short_history_user(model_repo.data), candidates(model_repo.data)
    with RedisServer(tmp_path / "redis", log_path=tmp_path / "redis.log") as server:
        with open_event_log(server.url) as log:
            log.append(tail_events(user, items))
        served, tails = pipeline(model_repo, server.url)
        with_tail = served.score(user, "", np.asarray(items))
    # redis-server is gone: the ranking is served from the stored sequence, the failure counted
    base = offline(model_repo, user, "", items, ())
    np.testing.assert_allclose(served.score(user, "", np.asarray(items)), base, atol=TOLERANCE)
    np.testing.assert_allclose(served.score(user, "", np.asarray(items)), base, atol=TOLERANCE)
    assert tails.read_errors == 1, "reads pause after a failure instead of waiting per request"
    assert np.abs(with_tail - base).max() > 1e-3


def test_a_store_compacted_from_another_log_refuses_this_one(tmp_path: Path) -> None:
    with (
        open_event_log(f"sqlite://{tmp_path / 'events.db'}") as log,
        pytest.raises(DataError, match="count events twice"),
    ):
        OnlineTails(log, Watermark("another-log", 3), encoder=None, max_events=10)


# ---- through the real gateway and tritonserver ------------------------------------------------


def ranked_scores(result) -> dict[int, float]:
    return dict(zip(result.item_ids, result.scores, strict=True))


def test_read_your_writes_through_the_gateway_and_triton(
    model_repo: BuiltRepo, log_url: str, tmp_path: Path
) -> None:
    """Record through the gateway, then Rank: the served scores are `seminar score`'s with the
    recorded events appended (<= 1e-4), on the very next request."""
    repo = single_version_repo(model_repo.repo, model_repo.version, tmp_path / "repo")
    user, items = short_history_user(model_repo.data), candidates(model_repo.data)
    arms = (
        Arm("control", pinned_ensemble_name(model_repo.version), model_repo.version, 50),
        Arm("treatment", ENSEMBLE_MODEL, model_repo.version, 50),
    )
    config = TritonConfig(
        repo=repo, model_control=ModelControl.EXPLICIT, load_models=("*",),
        log_path=tmp_path / "triton.log", event_log=log_url,
    )  # fmt: skip
    require_tritonserver()
    with TritonServer(config) as triton:
        gateway = launch_gateway(
            make_config(arms), triton.grpc_url, repo, tmp_path, event_log=log_url
        )
        try:
            for query in ("", NEW_QUERY):
                before = ranked_scores(rank_via_gateway(gateway.address, str(user), query, items))
                expected = offline(model_repo, user, query, items, ())
                assert np.abs([before[i] for i in items] - expected).max() <= TOLERANCE
            events = tail_events(user, items)
            answer = record_via_gateway(gateway.address, events)
            assert (answer.stored, answer.duplicates) == (len(events), 0)
            for query in ("", NEW_QUERY):
                served = ranked_scores(rank_via_gateway(gateway.address, str(user), query, items))
                expected = offline(model_repo, user, query, items, events)
                gap = float(np.abs([served[i] for i in items] - expected).max())
                print(
                    f"\n{log_url.split(':')[0]} query {query!r}: max |served - offline| {gap:.2e}"
                )
                assert gap <= TOLERANCE
            cold = ranked_scores(rank_via_gateway(gateway.address, str(COLD_USER), "", items))
            record_via_gateway(gateway.address, tail_events(COLD_USER, items, "cold"))
            warm = ranked_scores(rank_via_gateway(gateway.address, str(COLD_USER), "", items))
            expected = offline(
                model_repo, COLD_USER, "", items, tail_events(COLD_USER, items, "cold")
            )
            assert np.abs([warm[i] for i in items] - expected).max() <= TOLERANCE
            assert max(abs(warm[i] - cold[i]) for i in items) > 1e-3
            metrics = metrics_once(
                triton.metrics, lambda text: metric_total(text, "seminar_tail_length_count") >= 5
            )
            assert metric_total(metrics, "seminar_tail_length_count") >= 5
            assert metric_total(metrics, "seminar_tail_read_errors_total") == 0
        finally:
            gateway.process.stop()
