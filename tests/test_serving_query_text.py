"""`query_text`: the query's frozen MiniLM embedding, offline and on the real tritonserver.

Any query typed at serving time must get the embedding `seminar data prepare` gives the
training queries (seminar.data.features.embed_texts), so that served == offline holds for
queries never seen in training; the empty query is the zero row; each distinct query of a
batch is embedded once; a malformed query fails only its own request.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from seminar import contract
from seminar.build import minilm
from seminar.build.export import ExportConfig
from seminar.data.features import TEXT_DIM, embed_texts
from seminar.errors import CheckFailed
from seminar.serving.backend import RequestError
from seminar.serving.client import infer_inputs, score
from seminar.serving.features import decode_queries
from seminar.serving.query_text import QueryTextEncoder
from tests.support.serving import ATOL, offline_scores, pq_dir_of

UNSEEN = "a film about robots in love"


def query_column(*queries: str | bytes) -> np.ndarray:
    """(B, 1) object array of query bytes, as Triton hands them to a model."""
    rows = [q if isinstance(q, bytes) else q.encode() for q in queries]
    return np.array(rows, dtype=object).reshape(-1, 1)


@pytest.fixture(scope="module")
def ml(movielens_data):
    from seminar.data.dataset import PreparedDataset

    return PreparedDataset.load(movielens_data)


@pytest.fixture(scope="module")
def seen_query(ml) -> str:
    """A real search query of the training data."""
    return next(q for q in ml.queries if q)


@pytest.fixture(scope="module")
def text_graph(movielens_data, tmp_path_factory) -> Path:
    """The gated MiniLM graph, as `seminar build` exports it."""
    out = tmp_path_factory.mktemp("minilm")
    return minilm.export_query_text(out, movielens_data, ExportConfig(polygraphy=False)).onnx_path


@pytest.fixture(scope="module")
def encoder(text_graph) -> QueryTextEncoder:
    return QueryTextEncoder(minilm.TextEmbedder(text_graph, minilm.tokenizer_path()))


# ---- in-process: the encoder the backend wraps --------------------------------------------------
def test_the_contract_width_is_minilm_s() -> None:
    assert contract.QUERY_TEXT_DIM == TEXT_DIM


def test_query_text_runs_after_features_on_the_query_it_checked() -> None:
    steps = {step.model: step for step in contract.ensemble_steps()}
    assert steps[contract.QUERY_TEXT_MODEL].input_map == {
        contract.INPUT_QUERY: contract.QUERY_CHECKED
    }
    assert contract.QUERY_CHECKED in steps[contract.FEATURES_MODEL].output_map.values()
    assert steps[contract.QUERY_ENCODER_MODEL].input_map[contract.QUERY_TEXT_EMB] == (
        contract.QUERY_TEXT_EMB
    )


def test_seen_unseen_and_empty_queries_embed_like_embed_texts(encoder, seen_query) -> None:
    out = encoder(query_column(seen_query, "", UNSEEN, seen_query))[contract.QUERY_TEXT_EMB]
    assert out.shape == (4, TEXT_DIM) and out.dtype == np.float32
    assert not out[1].any(), "an empty query is the all-zero row, never MiniLM('')"
    expected = embed_texts([seen_query, UNSEEN], progress=False)
    np.testing.assert_allclose(out[[0, 2, 3]], expected[[0, 1, 0]], atol=1e-4, rtol=0)
    assert np.abs(embed_texts([""], progress=False)).max() > 0.01  # MiniLM("") is not zero


def test_each_distinct_query_of_a_batch_is_embedded_once(encoder, seen_query) -> None:
    calls: list[list[str]] = []
    embed = encoder.embedder.embed

    class Counting:
        def embed(self, texts):
            calls.append(list(texts))
            return embed(texts)

    counting = QueryTextEncoder(embedder=Counting(), max_query_bytes=encoder.max_query_bytes)
    rows = [seen_query] * 100 + [""] * 50 + [UNSEEN] * 100
    out = counting(query_column(*rows))[contract.QUERY_TEXT_EMB]
    assert calls == [sorted([seen_query, UNSEEN])], "one call, each distinct query once"
    assert (out[:100] == out[0]).all() and not out[100:150].any()
    assert (out[150:] == out[150]).all()
    assert not counting(query_column("", ""))[contract.QUERY_TEXT_EMB].any()
    assert len(calls) == 1, "a batch of recommendation requests never runs MiniLM"


def test_malformed_queries_are_rejected_with_features_messages(encoder) -> None:
    messages = []
    for column in (query_column("ok", b"x" * 2000), query_column(b"\xff\xfe")):
        with pytest.raises(RequestError) as ours:
            encoder(column)
        with pytest.raises(RequestError) as features:
            decode_queries(column, encoder.max_query_bytes)
        assert str(ours.value) == str(features.value)
        messages.append(str(ours.value))
    assert "query row 1 is 2000 bytes, over the limit of 1024 bytes" in messages[0]
    assert "query row 0 is not valid UTF-8" in messages[1]


def test_the_parity_gate_fails_the_build_naming_the_graph(text_graph) -> None:
    texts = ["funny", UNSEEN, *minilm.UNSEEN_QUERIES]
    with pytest.raises(CheckFailed, match=r"ONNX parity failed for query_text \(MiniLM graph"):
        minilm.minilm_parity(text_graph, minilm.tokenizer_path(), texts, atol=1e-12)


def test_the_query_text_model_never_imports_torch() -> None:
    """query_text.py runs numpy, tokenizers and ONNX Runtime only, the manifest check included."""
    import subprocess
    import sys

    code = (
        "import importlib.util, sys, types\n"
        "sys.modules['triton_python_backend_utils'] = types.ModuleType('pb_utils')\n"
        "from seminar import contract\n"
        "path = contract.backend_source_path(contract.QUERY_TEXT_SOURCE)\n"
        "spec = importlib.util.spec_from_file_location('query_text_model', path)\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- the real tritonserver ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(triton):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(triton.grpc_url)


def a_user_and_candidates(ml) -> tuple[int, np.ndarray]:
    u = int(ml.evaluated_users()[2])
    positive = int(ml.seq_item[ml.test_pos[u]])
    items = [ml.item_id(positive), *(ml.item_id(int(i)) for i in ml.test_negatives[u])]
    return int(ml.user_ids[u]), np.array(items, np.int64)


@pytest.mark.slow
@pytest.mark.serving
@pytest.mark.parametrize("which", ["seen", "unseen", "empty"])
def test_served_scores_match_offline_for_seen_unseen_and_empty_queries(
    which, client, ml, seen_query, model_repo, quick_run, movielens_data
) -> None:
    query = {"seen": seen_query, "unseen": UNSEEN, "empty": ""}[which]
    user, items = a_user_and_candidates(ml)
    served = score(client, user, query, items)
    offline = offline_scores(
        quick_run, movielens_data, pq_dir_of(model_repo.repo), user, query, items
    )
    np.testing.assert_allclose(served, offline, atol=ATOL, rtol=0)


@pytest.mark.slow
@pytest.mark.serving
def test_the_served_step_gives_minilm_rows_for_a_batch_mixing_two_queries(client) -> None:
    column = query_column(*(["funny"] * 3 + [""] * 2 + [UNSEEN] * 3))
    result = client.infer(contract.QUERY_TEXT_MODEL, infer_inputs({contract.INPUT_QUERY: column}))
    got = result.as_numpy(contract.QUERY_TEXT_EMB)
    expected = embed_texts(["funny", UNSEEN], progress=False)
    np.testing.assert_allclose(got[:3], np.repeat(expected[:1], 3, 0), atol=1e-4, rtol=0)
    assert not got[3:5].any()
    np.testing.assert_allclose(got[5:], np.repeat(expected[1:], 3, 0), atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.serving
def test_concurrent_requests_with_different_queries_each_match_offline(
    triton, ml, seen_query, model_repo, quick_run, movielens_data
) -> None:
    """Requests merged by dynamic batching, two queries and none among them: each request
    gets its own query's scores."""
    import tritonclient.grpc as grpcclient

    user, items = a_user_and_candidates(ml)
    queries = [seen_query, UNSEEN, ""] * 4

    def call(query: str) -> np.ndarray:
        return score(grpcclient.InferenceServerClient(triton.grpc_url), user, query, items)

    with ThreadPoolExecutor(6) as pool:
        served = list(pool.map(call, queries))
    pq_dir = pq_dir_of(model_repo.repo)
    for query in set(queries):
        offline = offline_scores(quick_run, movielens_data, pq_dir, user, query, items)
        for got in (s for s, q in zip(served, queries, strict=True) if q == query):
            np.testing.assert_allclose(got, offline, atol=ATOL, rtol=0)
    assert not np.allclose(served[0], served[1]), "the query changes the scores"


@pytest.mark.slow
@pytest.mark.serving
def test_a_malformed_query_fails_only_its_own_request(triton, client, ml) -> None:
    """Invalid UTF-8, a query over max_query_bytes and a negative user id get INVALID_ARG from
    the ensemble while good requests batched with them are served, each with its own answer
    (query_text runs after features, so no step rejects a request another step works on);
    sent straight to query_text, a malformed query is INVALID_ARG too."""
    import tritonclient.grpc as grpcclient

    user, items = a_user_and_candidates(ml)
    expected = score(client, user, UNSEEN, items)
    rows = len(items)
    bad_queries = {"utf8": b"\xff\xfe", "size": b"y" * 1500}

    def call(i: int):
        own = grpcclient.InferenceServerClient(triton.grpc_url)
        kind = ("utf8", "size", "negative user", "ok")[i % 4]
        if kind == "ok":
            return kind, score(own, user, UNSEEN, items)
        arrays = {
            contract.INPUT_USER_ID: np.full((rows, 1), -1 if kind == "negative user" else user),
            contract.INPUT_QUERY: query_column(*[bad_queries.get(kind, UNSEEN.encode())] * rows),
            contract.INPUT_ITEM_ID: items.reshape(-1, 1),
        }
        try:
            own.infer(contract.ENSEMBLE_MODEL, infer_inputs(arrays))
        except grpcclient.InferenceServerException as e:
            return kind, (e.status(), e.message())
        return kind, "served"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(call, range(48)))
    for kind, value in outcomes:  # each request its own answer, none lost
        if kind == "ok":
            np.testing.assert_allclose(value, expected, atol=1e-6, rtol=0)
        else:
            assert value != "served" and value[0] == "StatusCode.INVALID_ARGUMENT", (kind, value)
    messages = {kind: value[1] for kind, value in outcomes if kind != "ok"}
    assert "is not valid UTF-8" in messages["utf8"]
    assert "over the limit of 1024 bytes" in messages["size"]
    for column in (query_column(b"\xff\xfe", "ok"), query_column("ok", b"z" * 1500)):
        with pytest.raises(grpcclient.InferenceServerException) as info:
            client.infer(contract.QUERY_TEXT_MODEL, infer_inputs({contract.INPUT_QUERY: column}))
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert triton.is_alive() and client.is_model_ready(contract.ENSEMBLE_MODEL)
    np.testing.assert_allclose(score(client, user, UNSEEN, items), expected, atol=1e-6, rtol=0)
