"""`seminar serve` keeps the service up: hostile clients, stalls, crashes, bad versions.

Every test runs the real `seminar serve` (the supervisor, its gRPC proxy and the real
tritonserver) over a real built repository and talks real gRPC / HTTP to it. Each scenario was
reproduced against the plain tritonserver first (issue 12): there the server died or lied.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from seminar.clients.metrics import metric_total
from seminar.contract import ADMIN_KEY_HEADER, ENSEMBLE_MODEL
from seminar.serving import process_group
from seminar.serving.client import request_inputs, score
from seminar.serving.serve_process import ServeProcess
from tests.support.build import BuiltRepo, copy_repo
from tests.support.serving import require_tritonserver

pytestmark = [pytest.mark.slow, pytest.mark.serving]


# ---- clients -------------------------------------------------------------------------------------


class Clients:
    """Threads sending ModelInfer to `url` until stopped; counts the status codes."""

    def __init__(
        self,
        url: str,
        item_ids: np.ndarray,
        user_ids: np.ndarray,
        *,
        threads: int,
        candidates: int,
        deadline_s: tuple[float, float] | None,
        query_bytes: int = 0,
        seed: int = 0,
    ) -> None:
        self.url, self.item_ids, self.user_ids = url, item_ids, user_ids
        self.candidates, self.deadline_s, self.query_bytes = candidates, deadline_s, query_bytes
        self.codes: Counter[str] = Counter()
        self.errors: dict[str, str] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(seed + i,), daemon=True)
            for i in range(threads)
        ]

    def _run(self, seed: int) -> None:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        rng = random.Random(seed)
        client = grpcclient.InferenceServerClient(self.url)
        query = b"x" * self.query_bytes if self.query_bytes else b"comedy"
        while not self._stop.is_set():
            items = np.array(rng.sample(list(self.item_ids), self.candidates))
            timeout = rng.uniform(*self.deadline_s) if self.deadline_s else None
            try:
                client.infer(
                    ENSEMBLE_MODEL,
                    request_inputs(int(rng.choice(self.user_ids)), query, items),
                    client_timeout=timeout,
                )
                code = "OK"
            except InferenceServerException as err:
                code = str(err.status()).removeprefix("StatusCode.")
                self.errors.setdefault(code, str(err)[:300])
            with self._lock:
                self.codes[code] += 1
        client.close()

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def score_once(url: str, item_ids: np.ndarray, user_id: int = 1) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        return score(client, user_id, "comedy", item_ids[:20])
    finally:
        client.close()


def model_ready(url: str, name: str) -> bool:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        return client.is_model_ready(name)
    finally:
        client.close()


def triton_pid(serve: ServeProcess) -> int:
    return int(serve.status()["tritonserver_pid"])


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.2) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(interval_s)
    return time.monotonic() - started


# ---- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog(model_repo: BuiltRepo) -> tuple[np.ndarray, np.ndarray]:
    from seminar.data.dataset import PreparedDataset

    dataset = PreparedDataset.load(model_repo.data)
    return np.asarray(dataset.item_ids)[:2000], np.asarray(dataset.user_ids)[:200]


@pytest.fixture(scope="module")
def serve(model_repo: BuiltRepo, tmp_path_factory: pytest.TempPathFactory) -> ServeProcess:
    """One supervised server for the scenarios below, in file order (the last one kills it)."""
    require_tritonserver()
    work = tmp_path_factory.mktemp("supervised")
    repo = copy_repo(model_repo, work / "model_repository")
    with ServeProcess(repo, admin_key_file=work / "admin.key") as server:
        yield server


# ---- item 1: clients that cancel ---------------------------------------------------------------


def test_short_client_deadlines_never_reach_triton_as_cancellations(
    serve: ServeProcess, catalog: tuple[np.ndarray, np.ndarray]
) -> None:
    """1000-candidate requests with 5-100 ms deadlines at concurrency 8, plus 10 MB queries
    with a 0.3 s deadline: the plain tritonserver 2.51 died within seconds of this."""
    items, users = catalog
    pid = triton_pid(serve)
    storm = Clients(
        serve.grpc_url, items, users, threads=6, candidates=1000, deadline_s=(0.005, 0.1)
    )
    huge = Clients(
        serve.grpc_url, items, users, threads=2, candidates=1, deadline_s=(0.3, 0.3),
        query_bytes=10 * 1024 * 1024, seed=100,
    )  # fmt: skip
    with storm, huge:
        time.sleep(15)
    assert storm.codes["DEADLINE_EXCEEDED"] > 50, storm.codes
    allowed = {"OK", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"}
    assert set(storm.codes) | set(huge.codes) <= allowed, (storm.errors, huge.errors)
    assert sum(huge.codes.values()) >= 4, huge.codes
    status = serve.status()
    assert status["restarts"] == 0 and status["tritonserver_pid"] == pid, status
    # Triton finishes the abandoned calls (never more than the proxy's limit); then the server
    # answers normally again.
    wait_for(lambda: metric_total(serve.supervisor_metrics(), "seminar_serve_grpc_inflight") == 0, 60,
             "the abandoned calls to drain")  # fmt: skip
    assert np.isfinite(score_once(serve.grpc_url, items)).all()
    text = serve.supervisor_metrics()
    assert metric_total(text, "seminar_serve_grpc_abandoned_total", method="ModelInfer") > 0


def test_streaming_inference_is_refused_with_a_reason(serve: ServeProcess) -> None:
    import tritonclient.grpc as grpcclient

    results: list[object] = []
    client = grpcclient.InferenceServerClient(serve.grpc_url)
    client.start_stream(callback=lambda result, error: results.append(error or result))
    try:
        wait_for(lambda: bool(results), 10, "the stream to be refused")
    finally:
        client.stop_stream()
        client.close()
    assert "streaming inference is not offered" in str(results[0])


# ---- item 4: model control locked ------------------------------------------------------------


def test_model_repository_api_needs_the_admin_key(serve: ServeProcess) -> None:
    """An uploaded model.py must not load: the attack the open explicit mode allowed."""
    planted = b"import os\nos.system('touch /tmp/seminar-pwned')\n"
    body = json.dumps(
        {"parameters": {"config": json.dumps({"backend": "python"}),
                        "file:1/model.py": planted.hex()}}
    ).encode()  # fmt: skip
    url = f"http://{serve.http_url}/v2/repository/models/pwned/load"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=10)
    assert refused.value.code in (401, 403), refused.value.code
    unload = f"http://{serve.http_url}/v2/repository/models/{ENSEMBLE_MODEL}/unload"
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(urllib.request.Request(unload, data=b"{}", method="POST"))
    # Over gRPC (through the proxy) too.
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(serve.grpc_url)
    with pytest.raises(InferenceServerException, match=r"(?i)unavailable|denied|restrict|key"):
        client.unload_model(ENSEMBLE_MODEL)
    assert client.is_model_ready(ENSEMBLE_MODEL)
    # The holder of the key can use it.
    key = serve.admin_key_file.read_text().strip()
    index = urllib.request.Request(
        f"http://{serve.http_url}/v2/repository/index", data=b"{}", method="POST",
        headers={ADMIN_KEY_HEADER: key},
    )  # fmt: skip
    with urllib.request.urlopen(index, timeout=10) as resp:
        assert any(entry["name"] == ENSEMBLE_MODEL for entry in json.loads(resp.read()))
    client.close()


# ---- item 2: a stalled model process -----------------------------------------------------------


def test_a_stopped_model_process_is_resumed_and_the_server_survives(
    serve: ServeProcess, catalog: tuple[np.ndarray, np.ndarray]
) -> None:
    """SIGSTOP of pq_retrieval's process for 3 s under load: plain tritonserver 2.51 aborts
    (boost::interprocess::lock_exception) about 1 s after SIGCONT."""
    items, users = catalog
    pid = triton_pid(serve)
    stubs = [s for s in process_group.StubWatch(pid).stubs() if s.model == "pq_retrieval"]
    assert stubs, "no pq_retrieval model process found"
    with Clients(serve.grpc_url, items, users, threads=3, candidates=100, deadline_s=None) as load:
        time.sleep(2)
        os.kill(stubs[0].pid, signal.SIGSTOP)
        time.sleep(3)
        os.kill(stubs[0].pid, signal.SIGCONT)
        time.sleep(3)
    status = serve.status()
    assert status["restarts"] == 0 and status["tritonserver_pid"] == pid, status
    assert set(load.codes) == {"OK"}, (load.codes, load.errors)
    text = serve.supervisor_metrics()
    assert (
        metric_total(text, "seminar_serve_model_process_resumed_total", model="pq_retrieval") >= 1
    )


# ---- item 8: a dead model process --------------------------------------------------------------


def test_a_dead_model_process_is_reloaded_and_readiness_says_so_meanwhile(
    serve: ServeProcess, catalog: tuple[np.ndarray, np.ndarray]
) -> None:
    items, _ = catalog
    pid = triton_pid(serve)
    stubs = [s for s in process_group.StubWatch(pid).stubs() if s.model == "ranking_head"]
    seen_unready = threading.Event()

    def watch_readiness() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not seen_unready.is_set():
            if not serve.is_ready() and not model_ready(serve.grpc_url, ENSEMBLE_MODEL):
                seen_unready.set()
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_readiness)
    watcher.start()
    os.kill(stubs[0].pid, signal.SIGKILL)
    watcher.join()
    assert seen_unready.is_set(), "readiness never reported the dead model process"
    recovery = wait_for(serve.is_ready, 60, "the model to be reloaded")
    assert model_ready(serve.grpc_url, ENSEMBLE_MODEL)
    status = serve.status()
    assert status["restarts"] == 0 and status["tritonserver_pid"] == pid, status
    assert np.isfinite(score_once(serve.grpc_url, items)).all()
    text = serve.supervisor_metrics()
    assert (
        metric_total(text, "seminar_serve_model_reloads_total", model="ranking_head", result="ok")
        == 1
    )
    print(f"dead ranking_head process: ready again {recovery:.1f} s after readiness dropped")


# ---- item 3: tritonserver killed ----------------------------------------------------------------


def test_killed_tritonserver_is_restarted_and_leaves_nothing_behind(
    serve: ServeProcess, catalog: tuple[np.ndarray, np.ndarray]
) -> None:
    items, users = catalog
    old_pid = triton_pid(serve)
    old_stubs = [s.pid for s in process_group.StubWatch(old_pid).stubs()]
    regions = process_group.mapped_shm_regions(old_pid)
    assert old_stubs and regions, (old_stubs, regions)
    with Clients(serve.grpc_url, items, users, threads=2, candidates=100, deadline_s=(2, 2)):
        time.sleep(1)
        killed_at = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        wait_for(lambda: not serve.is_ready(), 10, "readiness to drop")
        wait_for(serve.is_ready, 180, "tritonserver to be restarted")
        recovery = time.monotonic() - killed_at
    status = serve.status()
    assert status["restarts"] == 1 and status["tritonserver_pid"] != old_pid, status
    assert process_group.group_pids(old_pid) == [], "processes of the dead server remain"
    left = [name for name in regions if (process_group.SHM_DIR / name).exists()]
    assert left == [], f"shared memory of the dead server remains: {left}"
    assert np.isfinite(score_once(serve.grpc_url, items)).all()
    print(f"tritonserver killed: serving again after {recovery:.1f} s")


# ---- item 6: a corrupt version -------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated store", "flipped onnx bytes"])
def test_a_corrupt_version_is_left_out_and_named_while_the_others_serve(
    model_repo_two_versions: Path,
    tmp_path: Path,
    damage: str,
    catalog: tuple[np.ndarray, np.ndarray],
) -> None:
    require_tritonserver()
    repo = Path(shutil.copytree(model_repo_two_versions, tmp_path / "model_repository"))
    if damage == "truncated store":
        target = repo / "pq_retrieval" / "2" / "pq" / "store" / "codes.npy"
        os.truncate(target, 100)
    else:
        target = repo / "item_encoder" / "2" / "model.onnx"
        data = bytearray(target.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(byte ^ 0xFF for byte in data[middle : middle + 64])
        target.write_bytes(bytes(data))
    relative = str(target.relative_to(repo))
    with ServeProcess(repo) as serve:
        status = serve.status()
        model = target.relative_to(repo).parts[0]
        assert relative in status["failed"][model]["2"], status["failed"]
        assert status["served"]["seminar_v1"] == ["1"]
        assert "seminar_v2" not in status["served"]
        assert status["served"][ENSEMBLE_MODEL] == ["1"], "seminar must fall back to version 1"
        assert "serving version 1 instead" in status["fallback"]
        assert relative in serve.log_tail(200), "the console must name the damaged file"
        items, _ = catalog
        assert np.isfinite(score_once(serve.grpc_url, items)).all()
        assert model_ready(serve.grpc_url, "seminar_v1")


def test_start_fails_with_a_sentence_when_nothing_can_be_served(tmp_path: Path) -> None:
    require_tritonserver()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.pbtxt").write_text('name: "broken" backend: "python" nonsense')
    serve = ServeProcess(tmp_path, startup_timeout_s=120)
    with pytest.raises(Exception, match=r"no model of .* could be loaded"):
        serve.start()


# ---- item 7: a version deleted by hand ---------------------------------------------------------


def test_a_version_deleted_by_hand_still_serves_the_others(
    model_repo_two_versions: Path, tmp_path: Path, catalog: tuple[np.ndarray, np.ndarray]
) -> None:
    """Deleting every version-2 folder (what retiring used to mean) left `seminar` pinned to 2,
    and the plain server refused to start. `seminar retire` is the way to retire a version;
    a repository damaged like this must still serve what it holds."""
    require_tritonserver()
    repo = Path(shutil.copytree(model_repo_two_versions, tmp_path / "model_repository"))
    for folder in [*sorted(repo.glob("*/2")), repo / "seminar_v2"]:
        shutil.rmtree(folder)
    with ServeProcess(repo) as serve:
        status = serve.status()
        assert status["served"][ENSEMBLE_MODEL] == ["1"], status
        assert "serving version 1 instead" in status["fallback"]
        items, _ = catalog
        assert np.isfinite(score_once(serve.grpc_url, items)).all()
