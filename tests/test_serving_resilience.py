"""What the models do when a request or their own process goes wrong, on the real tritonserver.

Each test runs a private server over a copy of the built repository (they stop stubs, cancel
requests or kill a stub). A stub is stopped with SIGSTOP: for under 0.7 s tritonserver cannot
notice (its stub heartbeat window is 1 s, the heartbeat beats every 0.3 s), which holds a
request inside a model for as long as a test needs; for 3 s, tritonserver gives the request up.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest

from seminar import contract
from seminar.contract import FEATURES_MODEL
from seminar.serving.client import infer_inputs, request_inputs, score
from tests.support.build import BuiltRepo, copy_repo
from tests.support.serving import Stub, private_triton, python_stubs

pytestmark = [pytest.mark.slow, pytest.mark.serving]


def zero_inputs(client, model: str, rows: int) -> list:
    """Valid inputs for a direct call to one composing model: zeros (PAD item and token, user
    index 0, zero embeddings and an all-empty top-K) and, for `features`, ids 1 and query ""."""
    config = client.get_model_config(model, as_json=True)["config"]
    arrays = {}
    for spec in config["input"]:
        shape = [rows, *(int(d) for d in spec["dims"])]
        if spec["data_type"] == "TYPE_STRING":
            value = np.full(shape, b"", dtype=object)
        elif spec["data_type"] == "TYPE_INT64":
            value = np.full(shape, 1 if model == FEATURES_MODEL else 0, dtype=np.int64)
        else:
            value = np.zeros(shape, np.float32)
        arrays[spec["name"]] = value
    return infer_inputs(arrays)


def stopped_for(stub: Stub, seconds: float):
    """SIGSTOP `stub` now; the returned function SIGCONTs it `seconds` after the stop."""
    stopped_at = time.monotonic()
    os.kill(stub.pid, signal.SIGSTOP)

    def resume() -> None:
        time.sleep(max(0.0, stopped_at + seconds - time.monotonic()))
        os.kill(stub.pid, signal.SIGCONT)

    return resume


def statistics(server, model: str) -> dict:
    return server.statistics(model)["model_stats"][0]


# ---- one server for the tests that leave it healthy ------------------------------------------
@pytest.fixture(scope="module")
def server(model_repo: BuiltRepo, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    work = tmp_path_factory.mktemp("resilience")
    repo = copy_repo(model_repo, work / "repo")
    with private_triton(repo, work / "tritonserver.log") as triton:
        yield triton


@pytest.fixture(scope="module")
def client(server):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(server.grpc_url)


def test_a_client_timeout_never_makes_a_step_end_an_ensemble_request_early(server, client) -> None:
    """Triton's per-request queue timeout rejected a request from one step's queue while its
    sibling step was still working on it, and that crashed tritonserver 2.51 (SIGSEGV in
    TRITONBACKEND_ResponseSend; 3 crashes in 3 minutes under load). The repository's configs
    therefore have no queue policy, and Triton ignores a client's `timeout`: the late request
    is served, not rejected."""
    import tritonclient.grpc as grpcclient

    stub = python_stubs(server)[FEATURES_MODEL]
    first, late = Future(), Future()

    def settle(future: Future):
        return lambda result, error: future.set_result(error or result)

    inputs = request_inputs(1, "", [1, 2, 3])
    resume = stopped_for(stub, 0.4)
    client.async_infer(contract.ENSEMBLE_MODEL, inputs, settle(first))
    time.sleep(0.05)
    client.async_infer(contract.ENSEMBLE_MODEL, inputs, settle(late), timeout=100_000)  # 100 ms
    resume()
    assert not isinstance(first.result(timeout=30), grpcclient.InferenceServerException)
    assert not isinstance(late.result(timeout=30), grpcclient.InferenceServerException)
    assert server.is_alive()
    assert len(score(client, 1, "", [1, 2, 3])) == 3


def test_serving_writes_no_bytecode_into_version_folders(server, client) -> None:
    """The stub imports model.py with bytecode writing on (and ignores
    PYTHONDONTWRITEBYTECODE); the build's empty __pycache__ file keeps it from writing any."""
    assert len(score(client, 1, "", [1, 2, 3])) == 3  # every model has run
    bytecode = sorted(
        p
        for p in server.repo.rglob("*")
        if p.suffix == ".pyc" or (p.is_dir() and p.name == "__pycache__")
    )
    assert not bytecode, bytecode


# ---- a stub frozen long enough for tritonserver to give its request up -----------------------
def heavy_pq_inputs(client, repo: Path, rows: int = 1024) -> list:
    """A direct pq_retrieval batch of `rows` rows spread over every stored user: an execute
    of a good fraction of a second, so that a busy stub is inside `execute` nearly always."""
    from seminar import contract

    users = len(np.load(repo / contract.FEATURES_MODEL / "1" / contract.USER_IDS_FILE))
    inputs = zero_inputs(client, contract.PQ_RETRIEVAL_MODEL, rows)
    rng = np.random.default_rng(0)
    for tensor in inputs:
        shape = tensor.shape()
        if tensor.name() == contract.USER_INDEX:
            tensor.set_data_from_numpy((np.arange(rows) % users).reshape(shape).astype(np.int64))
        elif tensor.name() == contract.INPUT_USER_ID:  # the key of each user's online tail
            tensor.set_data_from_numpy(np.arange(rows).reshape(shape).astype(np.int64))
        else:
            tensor.set_data_from_numpy(rng.standard_normal(shape).astype(np.float32))
    return inputs


def test_a_stub_frozen_for_3s_mid_execute_exits_and_tritonserver_survives(
    model_repo: BuiltRepo, tmp_path: Path
) -> None:
    """Under load, the pq_retrieval stub is stopped for 3 s while it runs its execute:
    tritonserver gives the request up ("not healthy") and frees it. On SIGCONT the stub must
    exit (its stall guard, code 75) instead of answering: before, its stale answer reached
    tritonserver as the answer to a later request and tritonserver aborted about 1 s later.
    Afterwards requests fail with a status until pq_retrieval is reloaded (the supervisor's
    job in production), then succeed again.

    The stop is placed while the stub runs its own code (not in a system call), which is where
    a busy stub spends its time: a freeze that lands while the stub's C++ loop is between
    executes is outside what a guard inside the model can see (see StallGuard)."""
    import tritonclient.grpc as grpcclient

    from seminar.serving.backend import STALL_EXIT_CODE

    repo = copy_repo(model_repo, tmp_path / "repo")
    log = tmp_path / "tritonserver.log"
    with private_triton(repo, log) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        user = 1
        expected = score(client, user, "", [1, 2, 3])
        heavy = heavy_pq_inputs(client, repo)
        stop_load = threading.Event()
        outcomes: list[tuple[float, str, object]] = []

        def load(kind: str) -> None:
            own = grpcclient.InferenceServerClient(server.grpc_url)
            while not stop_load.is_set():
                try:
                    if kind == "pq":
                        own.infer(contract.PQ_RETRIEVAL_MODEL, heavy)
                    else:
                        score(own, user, "", [1, 2, 3])
                    outcomes.append((time.monotonic(), kind, None))
                except grpcclient.InferenceServerException as error:
                    outcomes.append((time.monotonic(), kind, error))
                    time.sleep(0.05)

        threads = [threading.Thread(target=load, args=(k,)) for k in ("pq", "pq", "ensemble")]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1.0)
            stub = python_stubs(server)[contract.PQ_RETRIEVAL_MODEL]
            for _ in range(200):
                os.kill(stub.pid, signal.SIGSTOP)
                time.sleep(0.01)
                if stub.in_user_space():
                    break  # stopped while running its own code
                os.kill(stub.pid, signal.SIGCONT)  # a system call: 10 ms cannot matter
                time.sleep(random.uniform(0.005, 0.03))
            else:
                pytest.fail("the pq_retrieval stub was never caught running its own code")
            time.sleep(3.0)
            os.kill(stub.pid, signal.SIGCONT)
            resumed = time.monotonic()
            while stub.state() not in ("Z", None) and time.monotonic() < resumed + 10:
                time.sleep(0.05)
            time.sleep(2.0)  # tritonserver aborted about 1 s after SIGCONT when it crashed
            assert server.is_alive(), f"tritonserver died:\n{server.log_tail()}"
        finally:
            stop_load.set()
            for thread in threads:
                thread.join(timeout=60)
        assert stub.exit_code() == STALL_EXIT_CODE, (stub.state(), server.log_tail())
        assert (
            f"model {contract.PQ_RETRIEVAL_MODEL} version 1 did not run for 3." in log.read_text()
        )
        errors = [error for at, _, error in outcomes if error is not None]
        assert errors, "the freeze failed no request"
        for error in errors:  # each one an answer with a status, not a lost connection
            assert error.status() in ("StatusCode.INTERNAL", "StatusCode.UNAVAILABLE"), error
            assert "connect" not in error.message() and "Socket" not in error.message(), error
        assert any("not healthy" in error.message() for error in errors)

        server.unload_model(contract.PQ_RETRIEVAL_MODEL)
        server.load_model(contract.PQ_RETRIEVAL_MODEL)
        np.testing.assert_array_equal(score(client, user, "", [1, 2, 3]), expected)
