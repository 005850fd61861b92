"""A private repository served with explicit model control: a SYNTHETIC 10k-event user, and a
new version loaded while traffic flows.

The repository is built by the real `seminar build` from `quick_run` over prepared MovieLens
plus one SYNTHETIC user with 10,000 events (seeded random MovieLens items and queries,
seminar.serving.long_users), so the session's shared `model_repo` stays untouched.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from seminar import contract
from seminar.serving.client import request_inputs, score
from tests.support.build import build_cli
from tests.support.serving import (
    ATOL,
    metrics_once,
    offline_scores,
    pq_dir_of,
    require_serving_pieces,
    start_triton,
)

pytestmark = [pytest.mark.slow, pytest.mark.serving]

LONG_USER_EVENTS = 10_000


@pytest.fixture(scope="module")
def long_data(movielens_data: Path, tmp_path_factory: pytest.TempPathFactory):
    from seminar.serving.long_users import append_synthetic_users

    out = tmp_path_factory.mktemp("serving") / "movielens-long"
    users = append_synthetic_users(movielens_data, out, (LONG_USER_EVENTS,), seed=0)
    return out, users.user_ids[0]


def build(quick_run, data: Path, repo: Path, version: int) -> None:
    result = build_cli(quick_run, repo, version, "--data", str(data), "--no-polygraphy")
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def long_repo(quick_run, long_data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("serving") / "model_repository"
    build(quick_run, long_data[0], repo, 1)
    require_serving_pieces(repo)
    return repo


@pytest.fixture(scope="module")
def server(long_repo: Path):
    with start_triton(long_repo) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(server.grpc_url)


def candidates(data: Path, n: int = 100) -> np.ndarray:
    ids = np.load(data / "arrays" / "item_ids.npy")
    return np.random.default_rng(0).choice(ids, size=n, replace=False).astype(np.int64)


def test_10k_event_synthetic_user_matches_offline_reference(
    client, server, long_repo, long_data, quick_run
) -> None:
    data, user_id = long_data
    items = candidates(data)
    before = server.metrics()
    served = score(client, user_id, "", items)
    offline = offline_scores(quick_run, data, pq_dir_of(long_repo), user_id, "", items)
    np.testing.assert_allclose(served, offline, atol=ATOL, rtol=0)
    # The store really held 10k events for this user: the histogram's top bucket moved.
    bucket = 'seminar_pq_sequence_length_bucket{model="pq_retrieval",version="1",le="3000"}'

    def count(text: str, prefix: str) -> float:
        return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(prefix))

    total = "seminar_pq_sequence_length_count"
    after = metrics_once(server.metrics, lambda text: count(text, total) > count(before, total))
    assert count(after, total) - count(before, total) == 1
    assert count(after, bucket) == count(before, bucket)  # not <= 3000 events
    assert count(after, "seminar_pq_sequence_length_sum") - count(
        before, "seminar_pq_sequence_length_sum"
    ) == pytest.approx(LONG_USER_EVENTS)


def test_loading_version_2_while_traffic_flows_drops_no_request(
    client, server, long_repo, long_data, quick_run
) -> None:
    import tritonclient.grpc as grpcclient

    data, _ = long_data
    items = candidates(data, 20)
    user_id = int(np.load(data / "arrays" / "user_ids.npy")[0])
    outcomes: list[tuple[str, str]] = []  # (status, version that answered)
    stop = threading.Event()

    def traffic() -> None:
        own = grpcclient.InferenceServerClient(server.grpc_url)
        while not stop.is_set():
            try:
                result = own.infer(contract.ENSEMBLE_MODEL, request_inputs(user_id, "", items))
                outcomes.append(("ok", result.get_response().model_version))
            except grpcclient.InferenceServerException as e:
                outcomes.append(("error", e.message()))

    build(quick_run, data, long_repo, 2)  # the real build; explicit mode does not poll
    threads = [threading.Thread(target=traffic) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)  # traffic on version 1
        # Composing models keep every version (version_policy all): v2 loads beside v1; then
        # the pinned handle seminar_v2, then `seminar` re-pinned to v2. Each load swaps
        # atomically once the new version is READY.
        for name in (
            *contract.COMPOSING_MODELS,
            contract.pinned_ensemble_name(2),
            contract.ENSEMBLE_MODEL,
        ):
            server.load_model(name)
        time.sleep(1.0)  # traffic on the new version
    finally:
        stop.set()
        for t in threads:
            t.join()
    errors = [message for status, message in outcomes if status == "error"]
    assert not errors, errors[:3]
    versions = [v for status, v in outcomes if status == "ok"]
    assert versions[0] == "1" and versions[-1] == "2", (versions[0], versions[-1])
    # Both builds stay servable side by side (A/B arms).
    for pinned in (contract.pinned_ensemble_name(1), contract.pinned_ensemble_name(2)):
        assert np.isfinite(score(client, user_id, "", items, model=pinned)).all()


def test_a_corrupt_version_fails_to_load_and_the_served_one_keeps_serving(
    client, server, long_repo, long_data
) -> None:
    """A new version whose artifact does not match its manifest never becomes READY."""
    import shutil

    from seminar.serving.triton import TritonError

    data, user_id = long_data
    items = candidates(data, 10)
    src, dst = (
        long_repo / contract.PQ_RETRIEVAL_MODEL / "1",
        long_repo / contract.PQ_RETRIEVAL_MODEL / "9",
    )
    shutil.copytree(src, dst)
    table = dst / contract.PQ_DIR / "tables.safetensors"
    blob = bytearray(table.read_bytes())
    blob[-1] ^= 0xFF  # same size, one flipped byte
    table.write_bytes(bytes(blob))
    try:
        with pytest.raises(TritonError, match=r"(?i)sha256"):
            server.load_model(contract.PQ_RETRIEVAL_MODEL)
        assert not server.model_ready(contract.PQ_RETRIEVAL_MODEL, 9)
    finally:
        shutil.rmtree(dst)
    assert np.isfinite(score(client, int(user_id), "", items)).all()
