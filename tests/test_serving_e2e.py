"""The `seminar` ensemble on the real tritonserver, over the session's built repository.

Served scores are compared with the offline reference (`seminar score`'s Python function with
the same PQ artifacts, so both pick the same K events); malformed requests must get an error
status while the server stays healthy; /metrics must move.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from seminar import contract
from seminar.clients.metrics import metric_total
from seminar.serving.client import infer_inputs, request_inputs, score
from tests.support.serving import ATOL, metrics_once, offline_scores, pq_dir_of

pytestmark = [pytest.mark.slow, pytest.mark.serving]


@pytest.fixture(scope="module")
def ml(movielens_data):
    from seminar.data.dataset import PreparedDataset

    return PreparedDataset.load(movielens_data)


@pytest.fixture(scope="module")
def client(triton):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(triton.grpc_url)


def candidates_of(ml, u: int) -> np.ndarray:
    """The user's test candidates as external ids: the held-out positive, then 99 negatives."""
    positive = int(ml.seq_item[ml.test_pos[u]])
    return np.array(
        [ml.item_id(positive), *(ml.item_id(int(i)) for i in ml.test_negatives[u])], np.int64
    )


def a_user_with_a_search(ml) -> tuple[int, str]:
    """(user index, one of their real search queries)."""
    for u in ml.evaluated_users():
        start, stop = ml.user_span(int(u))
        queries = np.asarray(ml.seq_query[start:stop])
        if (queries > 0).any():
            return int(u), ml.queries[int(queries[queries > 0][0])]
    raise AssertionError("MovieLens has search events (tags); none found")


def check_against_reference(client, model_repo, quick_run, movielens_data, user_id, query, items):
    served = score(client, user_id, query, items)
    assert served.shape == (len(items),) and served.dtype == np.float32
    offline = offline_scores(
        quick_run, movielens_data, pq_dir_of(model_repo.repo), user_id, query, items
    )
    np.testing.assert_allclose(served, offline, atol=ATOL, rtol=0)
    return served


def test_search_request_matches_offline_reference(
    client, ml, model_repo, quick_run, movielens_data
) -> None:
    u, query = a_user_with_a_search(ml)
    items = candidates_of(ml, u)
    served = check_against_reference(
        client, model_repo, quick_run, movielens_data, int(ml.user_ids[u]), query, items
    )
    assert np.unique(served).size > 1  # the candidates are told apart


def test_recommendation_request_matches_offline_reference(
    client, ml, model_repo, quick_run, movielens_data
) -> None:
    u = int(ml.evaluated_users()[1])
    items = candidates_of(ml, u)
    rec = check_against_reference(
        client, model_repo, quick_run, movielens_data, int(ml.user_ids[u]), "", items
    )
    search = score(client, int(ml.user_ids[u]), a_user_with_a_search(ml)[1], items)
    assert not np.allclose(rec, search)  # the query reaches the model


def test_cold_start_user_is_scored_and_matches_offline_reference(
    client, ml, model_repo, quick_run, movielens_data
) -> None:
    unknown_user = int(ml.user_ids.max()) + 1_000
    items = candidates_of(ml, int(ml.evaluated_users()[0]))
    check_against_reference(client, model_repo, quick_run, movielens_data, unknown_user, "", items)


def test_history_changes_the_score(client, ml) -> None:
    """Two users with stored histories, same candidates: the retrieved events matter."""
    users = ml.evaluated_users()[:2]
    items = candidates_of(ml, int(users[0]))
    a, b = (score(client, int(ml.user_ids[u]), "", items) for u in users)
    assert np.abs(a - b).max() > 1e-6


def test_concurrent_users_are_batched_and_each_gets_its_own_scores(client, ml, triton) -> None:
    """Dynamic batching merges requests of several users; rows must not leak between them."""
    import tritonclient.grpc as grpcclient

    users = [int(ml.user_ids[u]) for u in ml.evaluated_users()[:8]]
    items = candidates_of(ml, int(ml.evaluated_users()[0]))
    alone = {uid: score(client, uid, "", items) for uid in users}

    def call(uid: int) -> tuple[int, np.ndarray]:
        own = grpcclient.InferenceServerClient(triton.grpc_url)
        return uid, score(own, uid, "", items)

    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(call, users * 4))
    for uid, scores in together:
        np.testing.assert_allclose(scores, alone[uid], atol=1e-6, rtol=0)


# ---- malformed requests ----------------------------------------------------------------------
def raw_inputs(user, query, item) -> list:
    """The ensemble's inputs as given (any dtype or shape); None leaves an input out."""
    named = {
        contract.INPUT_USER_ID: user,
        contract.INPUT_QUERY: query,
        contract.INPUT_ITEM_ID: item,
    }
    return infer_inputs({name: value for name, value in named.items() if value is not None})


def col(values, dtype=np.int64) -> np.ndarray:
    return np.asarray(values, dtype=dtype).reshape(-1, 1)


def texts(n: int, text: bytes = b"comedy") -> np.ndarray:
    return np.full((n, 1), text, dtype=object)


MALFORMED = {
    "wrong dtype": (
        lambda: raw_inputs(col([1, 1], np.int32), texts(2), col([1, 2])),
        "(?i)data-type|datatype|dtype|INT32",
    ),
    "missing input": (lambda: raw_inputs(col([1]), texts(1), None), "(?i)item_id"),
    "negative user id": (
        lambda: raw_inputs(col([1, -7]), texts(2), col([1, 2])),
        "user_id must be >= 0, row 1 has -7",
    ),
    "negative item id": (
        lambda: raw_inputs(col([1]), texts(1), col([-3])),
        "item_id must be >= 0, row 0 has -3",
    ),
    "non-UTF-8 query": (
        lambda: raw_inputs(col([1]), texts(1, b"\xff\xfe"), col([1])),
        "query row 0 is not valid UTF-8",
    ),
    "query over max_query_bytes": (
        lambda: raw_inputs(col([1, 1]), np.array([[b"ok"], [b"x" * 5000]], object), col([1, 2])),
        "query row 1 is 5000 bytes, over the limit of 1024 bytes",
    ),
    "empty batch": (
        lambda: raw_inputs(col([]), np.zeros((0, 1), object), col([])),
        "(?i)byte size|batch|shape|empty",
    ),
    "100k-row batch": (
        lambda: raw_inputs(col(np.ones(100_000)), texts(100_000), col(np.ones(100_000))),
        "(?i)batch.?size|max",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_gets_an_error_and_the_server_stays_healthy(case, client, ml) -> None:
    import tritonclient.grpc as grpcclient

    make, message = MALFORMED[case]
    with pytest.raises(grpcclient.InferenceServerException) as info:
        client.infer(contract.ENSEMBLE_MODEL, make())
    assert re.search(message, info.value.message()), info.value.message()
    assert info.value.status() in ("StatusCode.INVALID_ARGUMENT", "400"), info.value.status()
    assert client.is_server_live() and client.is_model_ready(contract.ENSEMBLE_MODEL)
    good = score(client, int(ml.user_ids[0]), "", ml.item_ids[:5])
    assert np.isfinite(good).all()


def test_a_10mb_query_is_rejected_untokenized_and_quickly(client, ml) -> None:
    """A direct client's 10 MB query used to hold `features` for seconds of tokenizing."""

    import tritonclient.grpc as grpcclient

    huge = np.array([[b"comedy " * 1_500_000]], dtype=object)  # 10.5 MB, one row
    started = time.perf_counter()
    with pytest.raises(grpcclient.InferenceServerException) as info:
        client.infer(contract.ENSEMBLE_MODEL, raw_inputs(col([1]), huge, col([1])))
    elapsed = time.perf_counter() - started
    assert "query row 0 is 10500000 bytes, over the limit of 1024 bytes" in info.value.message()
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert elapsed < 5.0, f"took {elapsed:.1f} s"
    assert np.isfinite(score(client, int(ml.user_ids[0]), "", ml.item_ids[:5])).all()


def model_inputs(client, model: str, values: dict[str, np.ndarray]) -> list:
    """Inputs for a direct call to one composing model: `values` by tensor name, zeros (a
    valid index everywhere: PAD row, cold-start user) for the others, all of `rows` rows."""
    config = client.get_model_config(model, as_json=True)["config"]
    rows = len(next(iter(values.values())))
    arrays = {}
    for spec in config["input"]:
        dims = [int(d) for d in spec["dims"]]
        dtype = contract.DataType(spec["data_type"]).numpy
        value = values.get(spec["name"], np.zeros((rows, *dims), dtype))
        arrays[spec["name"]] = np.ascontiguousarray(value, dtype)
    return infer_inputs(arrays)


def index_range(repo, model: str, name: str) -> tuple[int, int]:
    from seminar import contract
    from seminar.build import artifacts

    return artifacts.read_index_ranges(repo / model / "1" / contract.INDEX_RANGES_FILE)[name]


@pytest.mark.parametrize("where", ["negative", "past the end"])
def test_an_index_outside_its_table_sent_straight_to_an_encoder_is_invalid(
    client, triton, where
) -> None:
    """item_index -3 used to wrap around to a real item's embedding, and one past the end
    failed the whole batch inside ONNX Runtime."""
    import tritonclient.grpc as grpcclient

    for model, name in (
        (contract.ITEM_ENCODER_MODEL, contract.ITEM_INDEX),
        (contract.QUERY_ENCODER_MODEL, contract.QUERY_TOKENS),
    ):
        low, high = index_range(triton.repo, model, name)
        bad = -3 if where == "negative" else high
        width = int(client.get_model_config(model, as_json=True)["config"]["input"][0]["dims"][0])
        value = np.zeros((4, width), np.int64)
        value[2, width - 1] = bad
        with pytest.raises(grpcclient.InferenceServerException) as info:
            client.infer(model, model_inputs(client, model, {name: value}))
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value.message()
        assert (
            f"input {name} has {bad} at row 2, outside its table's range [{low}, {high})"
            in info.value.message()
        )
        value[2, width - 1] = high - 1  # the last row of the table is fine
        assert client.infer(model, model_inputs(client, model, {name: value})).get_response()


@pytest.mark.parametrize("user_index", [-3, "n_users"])
def test_a_user_index_outside_the_store_sent_straight_to_pq_retrieval_is_invalid(
    client, triton, user_index
) -> None:
    import tritonclient.grpc as grpcclient

    n_users = len(np.load(triton.repo / contract.FEATURES_MODEL / "1" / contract.USER_IDS_FILE))
    bad = n_users if user_index == "n_users" else user_index
    users = np.array([[0], [bad], [-1]], np.int64)
    with pytest.raises(grpcclient.InferenceServerException) as info:
        client.infer(
            contract.PQ_RETRIEVAL_MODEL,
            model_inputs(client, contract.PQ_RETRIEVAL_MODEL, {contract.USER_INDEX: users}),
        )
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value.message()
    assert f"user_index row 1 is {bad}, outside [-1, {n_users})" in info.value.message()


def test_a_bad_request_does_not_fail_the_good_ones_batched_with_it(client, ml, triton) -> None:
    import tritonclient.grpc as grpcclient

    uid, items = int(ml.user_ids[0]), ml.item_ids[:50]
    expected = score(client, uid, "", items)

    def call(i: int):
        own = grpcclient.InferenceServerClient(triton.grpc_url)
        if i % 4 == 0:
            try:
                own.infer(
                    contract.ENSEMBLE_MODEL, raw_inputs(col([-1] * 50), texts(50), col(items))
                )
            except grpcclient.InferenceServerException as e:
                return "error", e.message()
            return "served", None
        return "ok", score(own, uid, "", items)

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(call, range(32)))
    assert sum(kind == "error" for kind, _ in outcomes) == 8
    for kind, value in outcomes:
        if kind == "ok":
            np.testing.assert_allclose(value, expected, atol=1e-6, rtol=0)


# ---- metrics -------------------------------------------------------------------------------
def test_metrics_show_ensemble_and_pq_retrieval_counters_moving(client, ml, triton) -> None:
    before = triton.metrics()
    items = ml.item_ids[:100]
    for _ in range(3):
        score(client, int(ml.user_ids[0]), "", items)
    ok = "nv_inference_request_success"
    rows = "seminar_pq_rows_total"

    # Triton counts an ensemble request once its last step has answered, and the retrieval
    # step sends its own updates from a thread, both of which can be just after the client
    # has its response: read /metrics until the three show (at most 5 s).
    def shown(text: str) -> bool:
        moved = metric_total(text, ok, model=contract.ENSEMBLE_MODEL) - metric_total(
            before, ok, model=contract.ENSEMBLE_MODEL
        )
        return moved >= 3 and metric_total(text, rows) - metric_total(before, rows) >= 300

    after = metrics_once(triton.metrics, shown, timeout_s=5.0)
    assert (
        metric_total(after, ok, model=contract.ENSEMBLE_MODEL)
        - metric_total(before, ok, model=contract.ENSEMBLE_MODEL)
        >= 3
    )
    assert metric_total(after, ok, model=contract.PQ_RETRIEVAL_MODEL) > metric_total(
        before, ok, model=contract.PQ_RETRIEVAL_MODEL
    )
    assert metric_total(after, rows) - metric_total(before, rows) >= 300
    seq = "seminar_pq_sequence_length_count"
    assert metric_total(after, seq) - metric_total(before, seq) >= 3
    topk = "seminar_pq_topk_seconds_count"
    assert metric_total(after, topk) > metric_total(before, topk)
    assert metric_total(after, "seminar_pq_topk_seconds_sum") > 0


def test_request_to_a_missing_model_or_version_is_an_error(client) -> None:
    import tritonclient.grpc as grpcclient

    with pytest.raises(grpcclient.InferenceServerException, match=r"(?i)unknown|not found"):
        client.infer("no_such_model", request_inputs(1, "", [1]))
    with pytest.raises(grpcclient.InferenceServerException, match=r"(?i)version|unavailable"):
        client.infer(contract.ENSEMBLE_MODEL, request_inputs(1, "", [1]), model_version="99")


def test_demo_ranks_movielens_users_with_titles(triton, movielens_data, capsys) -> None:
    """`make demo`'s serving step (its server start/stop is the launcher's, tested apart)."""
    from seminar.serving.demo import rank_movielens_users

    results = rank_movielens_users(
        triton.repo, movielens_data, users=2, top=3, grpc_url=triton.grpc_url
    )
    assert len(results) == 4  # 2 users x (recommendation, search)
    for r in results:
        assert len(r["item_ids"]) == 100 and r["scores"] == sorted(r["scores"], reverse=True)
    out = capsys.readouterr().out
    assert "held-out movie ranked" in out
    assert re.search(r"\(\d{4}\)", out)  # MovieLens titles carry their year
