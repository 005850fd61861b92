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
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from seminar.constants import ENSEMBLE_MODEL
from seminar.serving.triton import (
    ModelControl,
    TritonConfig,
    TritonError,
    TritonInstall,
    TritonServer,
)


def require_tritonserver() -> None:
    """Skip the calling test when the bundled tritonserver is not installed."""
    try:
        TritonInstall.find()
    except TritonError as e:
        pytest.skip(f"real tritonserver unavailable: {e}")


def repo_path(model_repo: object) -> Path:
    """The repository folder of whatever the build fixture returns (a path or an object with
    `.path` / `.repo`)."""
    for attr in ("path", "repo", "root"):
        value = getattr(model_repo, attr, None)
        if isinstance(value, str | os.PathLike):
            return Path(value)
    return Path(model_repo)  # type: ignore[arg-type]


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


@pytest.fixture(scope="session")
def triton(model_repo: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """The real tritonserver over `model_repo`: explicit model control, everything loaded."""
    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    with start_triton(repo_path(model_repo), log_path=log) as server:
        yield server
