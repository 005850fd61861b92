"""The fused step's computation in C++ (seminar.serving.native.fused_step) against the Python one
(InProcessPipeline.score_rows) on the session's real MovieLens build: the same scores for known,
cold-start and searching users, short and long histories, unknown items, and several users'
rows interleaved in one call; bad rows refused with a message while the step keeps serving;
artifacts it cannot use refused at open; two threads, one step each, at once.
"""

from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException
from typer.testing import CliRunner

from seminar import contract, manifest
from seminar.build import repository
from seminar.errors import ArtifactError
from seminar.events import Event, EventType, open_event_log
from seminar.events.tail import DEFAULT_MAX_TAIL_EVENTS
from seminar.serving.backend import RequestError
from seminar.serving.client import request_inputs, score
from seminar.serving.inprocess import InProcessPipeline
from seminar.serving.native import fused_step
from seminar.serving.native.fused_step import NATIVE_MODEL, NativeFusedStep, add_native_model
from seminar.serving.tail import OnlineTails
from seminar.serving.triton import ModelControl, TritonConfig, TritonServer
from tests.support.build import BuiltRepo, copy_repo
from tests.support.clients import metric_samples
from tests.support.serving import ATOL, require_tritonserver

pytestmark = pytest.mark.skipif(
    not fused_step.available(),
    reason=f"{fused_step.LIBRARY.name} is not built (make setup) or this CPU has no AVX2",
)

QUERY = "a film about robots in love"


@pytest.fixture(scope="module")
def native(model_repo: BuiltRepo) -> NativeFusedStep:
    return NativeFusedStep.from_repo(model_repo.repo, model_repo.version)


def users_by_history(step: NativeFusedStep) -> tuple[int, int, int]:
    """External ids of a user with no stored event, one with a history no longer than the
    shortlist (every event reranked exactly) and one with a longer one (the PQ kernel)."""
    retriever = step.pipeline.retrieval.retriever
    lengths = np.diff(retriever.store.offsets)
    shortlist = step.pipeline.retrieval.k * retriever.config.rerank
    user_ids = step.pipeline.features.user_ids
    short = int(user_ids[np.flatnonzero((lengths > 0) & (lengths <= shortlist))[0]])
    long = int(user_ids[np.flatnonzero(lengths > shortlist)[0]])
    return 10**12, short, long


def stored_length(step: NativeFusedStep, user: int) -> int:
    """Events stored for external user id `user` (0 for a user the build never saw)."""
    user_ids = step.pipeline.features.user_ids
    index = np.flatnonzero(user_ids == user)
    offsets = step.pipeline.retrieval.retriever.store.offsets
    return int(offsets[index[0] + 1] - offsets[index[0]]) if index.size else 0


def test_native_scores_equal_the_python_pipeline_for_every_kind_of_row(
    native: NativeFusedStep,
) -> None:
    cold, short, long = users_by_history(native)
    known_items = native.pipeline.features.item_ids[:80]
    items = np.concatenate([known_items, [10**12, 10**12 + 1]])  # two unknown ids: OOV rows
    requests = [
        native.pipeline.map_request(user, query, items)
        for user in (cold, short, long)
        for query in ("", QUERY)
    ]
    for rows in requests:
        want = native.pipeline.score_rows(rows)
        got = native.score_rows(rows)
        assert got.shape == want.shape == (len(items), 1)
        assert np.abs(got - want).max() <= ATOL
        assert got.std() > 0  # real scores, not a constant
    # Several users in one call, their rows interleaved: each row keeps its own user.
    batch = {name: np.concatenate([rows[name] for rows in requests]) for name in requests[0]}
    order = np.random.default_rng(0).permutation(len(batch[contract.USER_INDEX]))
    shuffled = {name: values[order] for name, values in batch.items()}
    want = np.concatenate([native.pipeline.score_rows(rows) for rows in requests])[order]
    assert np.abs(native.score_rows(shuffled) - want).max() <= ATOL


def test_bad_rows_are_refused_with_a_reason_and_the_step_serves_on(
    native: NativeFusedStep,
) -> None:
    _, short, _ = users_by_history(native)
    items = native.pipeline.features.item_ids[:10]
    good = native.pipeline.map_request(short, "", items)
    want = native.pipeline.score_rows(good)
    for name, value, says in (
        (contract.USER_INDEX, 10**6, "outside [-1,"),
        (contract.USER_INDEX, -7, "outside [-1,"),
        (contract.ITEM_INDEX, 10**9, "1000000000"),  # ONNX Runtime names the index
        (contract.QUERY_TOKENS, 10**9, "1000000000"),
    ):
        rows = {key: array.copy() for key, array in good.items()}
        rows[name][3] = value
        with pytest.raises(RequestError, match=r".") as caught:
            native.score_rows(rows)
        assert says in str(caught.value), (name, str(caught.value))
    assert np.abs(native.score_rows(good) - want).max() <= ATOL


def test_artifacts_the_step_cannot_use_are_refused_at_open(
    model_repo: BuiltRepo, tmp_path: Path
) -> None:
    repo = copy_repo(model_repo, tmp_path / "model_repository")
    version_dir = lambda name: repo / name / str(model_repo.version)  # noqa: E731
    # a ranking head that is not one: the item encoder's graph in its place
    head = next(version_dir(contract.RANKING_HEAD_MODEL).glob("*.onnx"))
    shutil.copyfile(next(version_dir(contract.ITEM_ENCODER_MODEL).glob("*.onnx")), head)
    reference = NativeFusedStep.from_repo(model_repo.repo, model_repo.version)
    files = {name: next(version_dir(name).glob("*.onnx")) for name in contract.EXPORTED_MODELS}
    with pytest.raises(ArtifactError, match="graph inputs are item_index, expected"):
        NativeFusedStep(reference.pipeline, files)
    missing = dict(files, **{contract.RANKING_HEAD_MODEL: tmp_path / "absent.onnx"})
    with pytest.raises(ArtifactError, match=r"absent\.onnx"):
        NativeFusedStep(reference.pipeline, missing)
    # a pipeline that reads online tails: not yet the native step's job
    tails = OnlineTails.open(
        f"sqlite://{tmp_path / 'events.db'}", model_repo.repo, model_repo.version,
        DEFAULT_MAX_TAIL_EVENTS,
    )  # fmt: skip
    reference.pipeline.retrieval.tails = tails
    try:
        with pytest.raises(ArtifactError, match="online tails"):
            NativeFusedStep(reference.pipeline, files)
    finally:
        reference.pipeline.retrieval.tails = None


def test_two_threads_with_a_step_each_score_at_once_alike(
    native: NativeFusedStep, model_repo: BuiltRepo
) -> None:
    """ctypes lets go of the GIL for the call, so the steps truly overlap; each keeps its own
    scratch, so neither sees the other's rows."""
    other = NativeFusedStep.from_repo(model_repo.repo, model_repo.version)
    cold, short, long = users_by_history(native)
    items = native.pipeline.features.item_ids[:100]
    jobs = [native.pipeline.map_request(user, "", items) for user in (short, long, cold)]
    want = [native.pipeline.score_rows(rows) for rows in jobs]
    failures: list[str] = []

    def work(step: NativeFusedStep, offset: int) -> None:
        for round_ in range(20):
            at = (round_ + offset) % len(jobs)
            if np.abs(step.score_rows(jobs[at]) - want[at]).max() > ATOL:
                failures.append(f"job {at}, round {round_}")

    threads = [
        threading.Thread(target=work, args=(step, n)) for n, step in enumerate((native, other))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_rows_without_a_query_are_mapped_and_scored_all_in_cpp(native: NativeFusedStep) -> None:
    """score_ids does the features step in C++ too: known, cold-start and unknown ids as the
    Python mapper maps them, and its message for a negative id."""
    cold, short, long = users_by_history(native)
    items = np.concatenate([native.pipeline.features.item_ids[:50], [10**12]])
    for user in (cold, short, long):
        want = native.pipeline.score(user, "", items)
        assert np.abs(native.score(user, "", items) - want).max() <= ATOL
        assert (
            np.abs(
                native.score(user, QUERY, items) - native.pipeline.score(user, QUERY, items)
            ).max()
            <= ATOL
        )
    for users, item_ids, says in (
        (np.full(3, -5), items[:3], "user_id must be >= 0, row 0 has -5"),
        (
            np.full(3, short),
            np.array([items[0], -1, items[1]]),
            "item_id must be >= 0, row 1 has -1",
        ),
        (np.full(3, short), items[:2], "inputs disagree on the number of rows"),
    ):
        with pytest.raises(RequestError, match=re.escape(says)):
            native.score_ids(users, item_ids)


def test_rewriting_a_native_model_replaces_its_library_instead_of_writing_into_it(
    native: NativeFusedStep, tmp_path: Path
) -> None:
    """A running tritonserver has the model's backend library mapped: writing the new copy into
    the same file would change its code in place (SIGBUS). The new copy is renamed over it."""
    import os

    folder = add_native_model(tmp_path, native, 1, 1)
    library = folder / fused_step.BACKEND_LIBRARY.name
    before = os.stat(library).st_ino
    add_native_model(tmp_path, native, 1, 1)
    assert os.stat(library).st_ino != before
    assert sorted(p.name for p in folder.iterdir()) == sorted(["1", "config.pbtxt", library.name])


def test_the_cpp_backend_serves_the_python_scores_inside_tritonserver(
    native: NativeFusedStep, model_repo: BuiltRepo, tmp_path: Path
) -> None:
    """The real tritonserver loads the `seminar_native` backend and serves, over real gRPC, the
    scores of the Python pipeline, also for requests it batches together; a search (ASCII or
    not) is forwarded inside the server to the Python `pipeline` model and gets its scores, or
    its error, also mixed into a batch of recommendations; bad requests get INVALID_ARG with the
    features step's message while the others are served; the retrieval metrics of the rows it
    scored reach /metrics under its own labels; without a search model a search gets
    UNIMPLEMENTED (Triton's UNSUPPORTED), and with a missing one the server's reason; a model
    with an array changed in place (its sha256 differs from the manifest) or cut short never
    becomes ready and says why."""
    require_tritonserver()
    repo = copy_repo(model_repo, tmp_path / "model_repository")
    # searches go to this version's whole pipeline (here the six-step build's pinned ensemble)
    searches = contract.pinned_ensemble_name(model_repo.version)
    add_native_model(repo, native, model_repo.version, 2, search_model=searches)
    add_native_model(repo, native, model_repo.version, 1, "seminar_native_nosearch", None)
    add_native_model(repo, native, model_repo.version, 1, "seminar_native_lost", "no_such_model")
    # one array changed in place (same size): its sha256 no longer matches the manifest
    flipped = add_native_model(repo, native, model_repo.version, 2, name="seminar_native_flipped")
    blocks = flipped / str(model_repo.version) / fused_step.BUNDLE_DIR / "blocks.npy"
    data = bytearray(blocks.read_bytes())
    data[-1] ^= 0xFF
    blocks.write_bytes(bytes(data))
    # one array cut short with a manifest that agrees: the .npy reader refuses it
    cut = add_native_model(repo, native, model_repo.version, 2, name="seminar_native_cut")
    bundle = cut / str(model_repo.version) / fused_step.BUNDLE_DIR
    (bundle / "blocks.npy").write_bytes((bundle / "blocks.npy").read_bytes()[:-100])
    manifest.write_manifest(bundle)
    cold, short, long = users_by_history(native)
    items = np.concatenate([native.pipeline.features.item_ids[:60], [10**12]])
    config = TritonConfig(
        repo=repo, wait_models=(NATIVE_MODEL,), log_path=tmp_path / "triton.log",
        exit_on_error=False,
    )  # fmt: skip
    with TritonServer(config) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        for user in (cold, short, long):
            got = score(client, user, "", items, model=NATIVE_MODEL)
            assert np.abs(got - native.pipeline.score(user, "", items)).max() <= ATOL
        for user, query in (
            (cold, QUERY),
            (long, QUERY),
            (short, "robots \u00e0 la fran\u00e7aise"),
        ):
            got = score(client, user, query, items, model=NATIVE_MODEL)  # forwarded
            assert np.abs(got - native.pipeline.score(user, query, items)).max() <= ATOL
        # many requests at once: the dynamic batcher hands several to one execute, searches
        # (forwarded) among recommendations (scored here)
        asked = [(user, query) for user in (cold, short, long) for query in ("", "", QUERY)] * 3
        boxes = [ResultBox() for _ in asked]
        for (user, query), box in zip(asked, boxes, strict=True):
            client.async_infer(NATIVE_MODEL, request_inputs(user, query, items), box)
        for box, (user, query) in zip(boxes, asked, strict=True):
            got = box.wait().as_numpy(contract.OUTPUT_SCORE).reshape(-1)
            assert np.abs(got - native.pipeline.score(user, query, items)).max() <= ATOL
        for inputs, status, says in (
            (
                request_inputs(-5, "", items[:3]),
                "INVALID_ARG",
                "user_id must be >= 0, row 0 has -5",
            ),
            # a search the pipeline model refuses: its status and message come back
            (request_inputs(-5, QUERY, items[:3]), "INVALID_ARG", "user_id must be >= 0"),
        ):
            with pytest.raises(InferenceServerException) as caught:
                client.infer(NATIVE_MODEL, inputs)
            assert status in str(caught.value.status()) and says in caught.value.message()
        for model, status, says in (
            ("seminar_native_nosearch", "UNIMPLEMENTED", "names no search_model"),
            ("seminar_native_lost", "", "forwarding the search to model no_such_model: "),
        ):
            with pytest.raises(InferenceServerException) as caught:
                client.infer(model, request_inputs(short, QUERY, items[:3]))
            assert status in str(caught.value.status()) and says in caught.value.message()
            got = score(client, short, "", items, model=model)  # recommendations still served
            assert np.abs(got - native.pipeline.score(short, "", items)).max() <= ATOL
        got = score(client, short, "", items, model=NATIVE_MODEL)  # it still serves
        assert np.abs(got - native.pipeline.score(short, "", items)).max() <= ATOL
        assert not server.model_ready("seminar_native_flipped")
        assert not server.model_ready("seminar_native_cut")
        # The retrieval metrics of the rows it scored itself (22 recommendation requests of
        # 61 rows: 7 for the cold user, 8 for the short history, 7 for the long one), labelled
        # with this model, beside the Python step's families of the same names.
        labels = {"model": NATIVE_MODEL, "version": str(model_repo.version)}

        def sample(name: str) -> float:
            found = [v for got, v in metric_samples(server.metrics_url, name) if got == labels]
            assert len(found) == 1, (name, found)
            return found[0]

        assert sample("seminar_pq_rows_total") == 22 * len(items)
        assert sample("seminar_pq_sequence_length_count") == 22
        lengths = {user: stored_length(native, user) for user in (cold, short, long)}
        assert lengths[cold] == 0 < lengths[short] < lengths[long]
        want = 8 * lengths[short] + 7 * lengths[long]
        assert sample("seminar_pq_sequence_length_sum") == want
        assert 1 <= sample("seminar_pq_topk_seconds_count") <= 22
        assert sample("seminar_pq_topk_seconds_sum") > 0
    log = (tmp_path / "triton.log").read_text()
    assert "blocks.npy: sha256 differs from" in log
    assert "blocks.npy: truncated data" in log


def test_a_native_build_serves_the_offline_scores_through_the_ensemble_and_retires_whole(
    native: NativeFusedStep, model_repo: BuiltRepo, tmp_path: Path
) -> None:
    """`seminar build --graph native` writes `seminar_native` (its bundle, its library, the
    config a build validates) beside `pipeline` and the six steps, and the ensemble schedules
    it: the real tritonserver answers `seminar` with the offline scores (`seminar score`), a
    recommendation in C++ and a search forwarded to `pipeline`. `seminar retire` of that
    version, beside the six-step version 1, takes the native model's folder, library and all."""
    from seminar.cli import app
    from seminar.training.scoring import score_request
    from tests.support.build import build_cli

    require_tritonserver()
    repo = copy_repo(model_repo, tmp_path / "model_repository")
    built = build_cli(model_repo.run, repo, 2, "--data", str(model_repo.data), "--graph", "native")
    assert built.exit_code == 0, built.output
    folder = repo / NATIVE_MODEL
    assert (folder / contract.NATIVE_LIBRARY).is_file()
    assert (folder / "2" / fused_step.BUNDLE_DIR / "spec.txt").is_file()
    manifest.verify_manifest(folder / "2")
    pinned = repository.parse_config(repo / "seminar_v2" / contract.CONFIG_FILE)
    assert [step.model_name for step in pinned.ensemble_scheduling.step] == [NATIVE_MODEL]
    _, short, _ = users_by_history(native)  # every event reranked exactly: the offline GSU
    items = [int(item) for item in native.pipeline.features.item_ids[:30]]
    # the ensemble (which loads the native step it schedules) and where searches go: not the
    # six steps' two versions, whose stubs would only make the test slower
    config = TritonConfig(
        repo=repo, model_control=ModelControl.EXPLICIT, log_path=tmp_path / "triton.log",
        load_models=(contract.ENSEMBLE_MODEL, contract.PIPELINE_MODEL),
        wait_models=(contract.ENSEMBLE_MODEL, contract.PIPELINE_MODEL),
    )  # fmt: skip
    with TritonServer(config) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        for query in ("", QUERY):
            want = score_request(model_repo.run, short, query, items, data=model_repo.data)
            got = score(client, short, query, np.asarray(items), model=contract.ENSEMBLE_MODEL)
            assert np.abs(got - np.asarray(want, np.float32)).max() <= ATOL, query
        rows = [v for labels, v in metric_samples(server.metrics_url, "seminar_pq_rows_total")
                if labels.get("model") == NATIVE_MODEL]  # fmt: skip
        assert rows == [len(items)], "the recommendation was not scored in C++"
    retired = CliRunner().invoke(app, ["retire", "--repo", str(repo), "--version", "2"])
    assert retired.exit_code == 0, retired.output
    assert not folder.exists() and not (repo / contract.PIPELINE_MODEL).exists()
    assert (repo / contract.FEATURES_MODEL / "1").is_dir()


def test_with_an_event_log_every_request_is_forwarded_and_the_tails_are_scored(
    mixed_repo: Path, tmp_path: Path
) -> None:
    """The C++ step does not read users' online tails. With tritonserver reading an event log,
    the native model forwards every request, recommendations too, to its search model, whose
    scores include the user's recorded events (never the stale stored-only ones); a native model
    with nowhere to forward them refuses to load and says why."""
    require_tritonserver()
    repo = copy_repo(mixed_repo, tmp_path / "model_repository")
    native = NativeFusedStep.from_repo(repo, 2)
    add_native_model(repo, native, 2, 1)  # forwards to pipeline version 2
    add_native_model(repo, native, 2, 1, "seminar_native_nosearch", None)
    _, short, _ = users_by_history(native)
    items = native.pipeline.features.item_ids[:40]
    url = f"sqlite://{tmp_path / 'events.db'}"
    with open_event_log(url) as log:
        log.append(
            [Event(f"e{n}", short, int(items[n]), "", EventType.REC, True) for n in (3, 5, 7)]
        )
    tails = OnlineTails.open(url, repo, 2, DEFAULT_MAX_TAIL_EVENTS)
    with_tails = InProcessPipeline.from_repo(repo, 2, tails=tails)
    want = {query: with_tails.score(short, query, items) for query in ("", QUERY)}
    stale = native.pipeline.score(short, "", items)
    assert np.abs(want[""] - stale).max() > 1e-3, "the recorded events change nothing: no test"
    served = (NATIVE_MODEL, "seminar_native_nosearch", contract.PIPELINE_MODEL)
    config = TritonConfig(
        repo=repo, model_control=ModelControl.EXPLICIT, load_models=served,
        wait_models=(NATIVE_MODEL, contract.PIPELINE_MODEL), log_path=tmp_path / "triton.log",
        exit_on_error=False, event_log=url,
    )  # fmt: skip
    with TritonServer(config) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        for query in ("", QUERY):
            got = score(client, short, query, items, model=NATIVE_MODEL)
            assert np.abs(got - want[query]).max() <= ATOL, query
        assert not server.model_ready("seminar_native_nosearch")
        log = (tmp_path / "triton.log").read_text()
        assert "names no search_model to forward its requests to" in log


def test_a_search_model_killed_under_load_fails_searches_with_a_status_and_spares_the_rest(
    mixed_repo: Path, tmp_path: Path
) -> None:
    """The native model waits for the searches it forwarded. When the `pipeline` stub they go
    to is killed (kill -9) under load, every search comes back, with the right scores or a
    status (no hang, no lost connection); the recommendations the C++ step scores keep being
    answered right; tritonserver survives; once `pipeline` is reloaded, searches are served
    again."""
    import os
    import signal
    import time

    from tests.support.serving import private_triton, python_stubs

    repo = copy_repo(mixed_repo, tmp_path / "model_repository")
    step = NativeFusedStep.from_repo(repo, 2)
    add_native_model(repo, step, 2, instances=1)  # searches go to pipeline version 2
    _, short, _ = users_by_history(step)
    items = step.pipeline.features.item_ids[:60]
    want = {query: step.pipeline.score(short, query, items) for query in ("", QUERY)}
    served = (NATIVE_MODEL, contract.PIPELINE_MODEL)
    with private_triton(repo, tmp_path / "triton.log", served, served) as server:
        stop = threading.Event()
        outcomes: list[tuple[str, Exception | None]] = []

        def load(query: str) -> None:
            own = grpcclient.InferenceServerClient(server.grpc_url)
            while not stop.is_set():
                try:
                    got = score(own, short, query, items, model=NATIVE_MODEL)
                    assert np.abs(got - want[query]).max() <= ATOL  # never a wrong answer
                    outcomes.append((query, None))
                except InferenceServerException as error:
                    outcomes.append((query, error))
                    time.sleep(0.05)

        threads = [threading.Thread(target=load, args=(q,)) for q in (QUERY, QUERY, "")]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1.0)
            os.kill(python_stubs(server)[contract.PIPELINE_MODEL].pid, signal.SIGKILL)
            time.sleep(3.0)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads), "a call never came back"
        assert server.is_alive(), server.log_tail()
        failed = [error for query, error in outcomes if error is not None]
        assert all(query == QUERY for query, error in outcomes if error is not None), failed
        assert failed, "the kill failed no search: not a test of it"
        for error in failed:  # an answer with a status, not a lost connection
            assert error.status() in ("StatusCode.INTERNAL", "StatusCode.UNAVAILABLE"), error
            assert "connect" not in error.message() and "Socket" not in error.message(), error
        assert sum(1 for query, error in outcomes if query == "" and error is None) > 10
        server.unload_model(contract.PIPELINE_MODEL)
        server.load_model(contract.PIPELINE_MODEL)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        got = score(client, short, QUERY, items, model=NATIVE_MODEL)
        assert np.abs(got - want[QUERY]).max() <= ATOL


class ResultBox:
    """A callback for tritonclient's async_infer that a test can wait on."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result = self.error = None

    def __call__(self, result, error) -> None:
        self.result, self.error = result, error
        self.done.set()

    def wait(self):
        assert self.done.wait(60), "no answer within 60 s"
        if self.error is not None:
            raise self.error
        return self.result
