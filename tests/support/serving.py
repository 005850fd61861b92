"""Fixtures for the serving tests: the real tritonserver over the built model repository.

`triton` (session) runs over `model_repo` (tests/support/build.py) with explicit model control
and every model loaded at start, so tests can also load and unload models without a restart:

    def test_x(triton):
        client = tritonclient.grpc.InferenceServerClient(triton.grpc_url)
        triton.load_model("seminar_v1"); triton.unload_model("seminar_v1")

`.grpc_url` / `.http_url` are `host:port`; `.metrics_url` is the full `/metrics` URL; `.repo` is
the repository path. Serving tests skip (with the reason) when the tritonserver binary from
nvidia-pytriton is missing; they never mock it.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from seminar.contract import ENSEMBLE_MODEL
from seminar.serving.triton import (
    ModelControl,
    TritonConfig,
    TritonError,
    TritonInstall,
    TritonServer,
)
from tests.support.build import BuiltRepo


def require_tritonserver() -> None:
    """Skip the calling test when the bundled tritonserver is not installed."""
    try:
        TritonInstall.find()
    except TritonError as e:
        pytest.skip(f"real tritonserver unavailable: {e}")


# Served vs offline scores (issue 6): same artifacts, same PQ top-K, float32 ONNX vs torch.
ATOL = 1e-4


def metrics_once(
    read: Callable[[], str], ready: Callable[[str], bool], timeout_s: float = 10.0
) -> str:
    """/metrics text (`read`) once `ready` holds, or the last text after `timeout_s`: the
    retrieval step sends its updates from a thread after the answers go back."""
    deadline = time.monotonic() + timeout_s
    text = read()
    while not ready(text) and time.monotonic() < deadline:
        time.sleep(0.05)
        text = read()
    return text


def pq_dir_of(repo: Path, version: int = 1) -> Path:
    """The PQ artifacts `pq_retrieval` serves for `version` (what `seminar score --gsu pq
    --pq-dir` must use to pick the same K events)."""
    from seminar import contract
    from seminar.contract import PQ_RETRIEVAL_MODEL

    return repo / PQ_RETRIEVAL_MODEL / str(version) / contract.PQ_DIR


@functools.cache
def _reference_parts(run: Path, pq_dir: Path):
    try:
        from seminar.training.checkpoint import load_run
        from seminar.training.scoring import score_indices, score_request
    except ImportError as e:
        pytest.skip(
            "offline reference missing: seminar.training.scoring (model area, "
            f"`seminar score --gsu pq --pq-dir`) is not importable ({e})"
        )
    from seminar.pq import load_pq_retriever

    return load_run(run), load_pq_retriever(pq_dir, "cpu"), score_request, score_indices


def offline_scores(
    quick_run: Path,
    data: Path,
    pq_dir: Path,
    user_id: int,
    query: str,
    item_ids: np.ndarray,
) -> np.ndarray:
    """The offline reference with the server's PQ artifacts (so both pick the same K events).

    A user of `data` goes through `score_request` (what `seminar score --gsu pq` runs); a
    cold-start user (no stored history) through its core `score_indices` with an empty history,
    which is how the contract scores them.
    """
    from seminar.data.dataset import PreparedDataset

    run, retriever, score_request, score_indices = _reference_parts(quick_run, pq_dir)
    items = [int(i) for i in item_ids]
    ds = PreparedDataset.load(data)
    if int(user_id) in set(ds.user_ids.tolist()) and "synthetic_users" not in ds.meta:
        scores = score_request(run, int(user_id), query, items, retriever=retriever, data=data)
    else:
        # Cold start, or a SYNTHETIC user appended to the run's dataset (checksum differs).
        known = int(user_id) in set(ds.user_ids.tolist())
        history = ds.history(ds.user_index(int(user_id))) if known else None
        scores = score_indices(
            run.model,
            ds.tokenizer().encode(query),
            [ds.item_index(i) for i in items],
            history.item if known else [],
            history.query if known else [],
            retriever,
        )
    return np.asarray(scores, dtype=np.float32).reshape(-1)


@contextlib.contextmanager
def start_triton(
    repo: Path,
    *,
    explicit: bool = True,
    load_models: tuple[str, ...] = ("*",),
    wait_models: tuple[str, ...] = (ENSEMBLE_MODEL,),
    log_path: Path | None = None,
) -> Iterator[TritonServer]:
    """A tritonserver on free loopback ports over `repo`, stopped on exit."""
    require_tritonserver()
    config = TritonConfig(
        repo=repo,
        model_control=ModelControl.EXPLICIT if explicit else ModelControl.NONE,
        load_models=load_models if explicit else (),
        wait_models=wait_models,
        log_path=log_path,
    )
    with TritonServer(config) as server:
        yield server


def require_serving_pieces(repo: Path) -> None:
    """Skip, naming the missing piece, when another area's part the server needs is absent."""
    from seminar.errors import ArtifactError
    from seminar.serving.retrieval import pair_alpha

    for pq_dir in sorted(repo.glob("pq_retrieval/*/pq")):
        try:
            pair_alpha(pq_dir)
        except ArtifactError as e:
            pytest.skip(f"missing piece from seminar.pq: {e}")


@pytest.fixture(scope="session")
def triton(
    model_repo: BuiltRepo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    """The real tritonserver over `model_repo`: explicit model control, everything loaded."""
    repo = model_repo.repo
    require_serving_pieces(repo)
    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    with start_triton(repo, log_path=log) as server:
        yield server


# ---- the Python-backend stub processes of a server (for tests that stop or kill them) ---------
@dataclass(frozen=True)
class Stub:
    """One `triton_python_backend_stub` child of a tritonserver, read from /proc."""

    pid: int
    model: str
    version: str
    shm_region: str  # its /dev/shm region, which tritonserver removes unless it crashes

    def state(self) -> str | None:
        """The kernel's one-letter process state ("Z" once it exited), None once reaped."""
        try:
            return Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return None

    def exit_code(self) -> int | None:
        """The exit code of a stub that exited and was not reaped yet (a zombie), else None."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return int(fields[49]) >> 8 if fields[0] == "Z" else None

    def in_user_space(self) -> bool:
        """Whether its main thread is running, or was stopped while running, its own code
        (not waiting in a system call)."""
        try:
            return Path(f"/proc/{self.pid}/syscall").read_text().split()[0] in ("running", "-1")
        except OSError:
            return False


def python_stubs(server: TritonServer) -> dict[str, Stub]:
    """The live stub of every Python model of `server`, keyed by model name. The stub's
    command line is: stub binary, <repo>/<model>/<version>/model.py, shm region, ..."""
    stubs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if parent != server.pid or len(argv) < 3 or not argv[1].endswith("/model.py"):
            continue
        model_py = Path(argv[1])
        stub = Stub(int(entry.name), model_py.parent.parent.name, model_py.parent.name, argv[2])
        stubs[stub.model] = stub
    return stubs


@contextlib.contextmanager
def private_triton(
    repo: Path,
    log_path: Path,
    load_models: tuple[str, ...] = ("*",),
    wait_models: tuple[str, ...] = (ENSEMBLE_MODEL,),
) -> Iterator[TritonServer]:
    """A tritonserver of the test's own (tests that stop, kill or crash it), over `repo`.

    On exit it also removes the stubs' shared-memory regions that a crashed server leaves in
    /dev/shm (only this server's: the names come from its own stubs)."""
    regions: set[str] = set()
    with start_triton(
        repo, load_models=load_models, wait_models=wait_models, log_path=log_path
    ) as server:
        try:
            regions |= {stub.shm_region for stub in python_stubs(server).values()}
            yield server
        finally:
            regions |= {stub.shm_region for stub in python_stubs(server).values()}
            # A model whose stub died never finishes unloading, so a graceful stop would
            # wait out tritonserver's whole 30 s exit timeout.
            server.stop(timeout_s=5)
    for region in regions:
        with contextlib.suppress(FileNotFoundError):
            (Path("/dev/shm") / region).unlink()
