"""The fused graph (contract.Graph.FUSED, `seminar build --graph fused`): the cpu ensemble as one
Python step, `pipeline`, served by the real tritonserver over real gRPC.

The repository is the session's `mixed_repo` (tests/support/build.py): `model_repo` (version 1,
the six steps) plus a version 2 built fused from the same run, so one server holds both graphs:
`seminar_v1` (steps), `seminar_v2` and `seminar` (fused, pinned to the newest version).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from seminar import contract
from seminar.build import builder, repository, retire
from seminar.clients.metrics import metric_total
from seminar.errors import UsageError
from seminar.events import Event, EventType, open_event_log
from seminar.events.tail import DEFAULT_MAX_TAIL_EVENTS
from seminar.serving.client import request_inputs, score
from seminar.serving.inprocess import InProcessPipeline
from seminar.serving.tail import OnlineTails
from seminar.serving.triton import TritonConfig, TritonServer
from tests.support.build import copy_repo
from tests.support.serving import (
    ATOL,
    metrics_once,
    require_tritonserver,
)

pytestmark = [pytest.mark.slow, pytest.mark.serving]

QUERY = "a film about robots in love"


def ensemble_steps(repo: Path, name: str) -> list[tuple[str, int]]:
    config = repository.parse_config(repo / name / contract.CONFIG_FILE)
    return [(step.model_name, step.model_version) for step in config.ensemble_scheduling.step]


def test_a_fused_build_schedules_one_step_beside_the_steps_of_version_1(mixed_repo: Path) -> None:
    assert ensemble_steps(mixed_repo, contract.ENSEMBLE_MODEL) == [(contract.PIPELINE_MODEL, 2)]
    assert ensemble_steps(mixed_repo, "seminar_v2") == [(contract.PIPELINE_MODEL, 2)]
    assert ensemble_steps(mixed_repo, "seminar_v1") == [
        (name, 1) for name in contract.COMPOSING_MODELS
    ]
    for name in contract.COMPOSING_MODELS:  # the fused step reads the steps' version 2
        assert (mixed_repo / name / "2" / contract.MANIFEST_FILE).is_file()


def test_the_fused_graph_serves_the_in_process_scores_and_rejects_bad_requests(
    mixed_repo: Path, tmp_path: Path
) -> None:
    """Parity with the in-process pipeline (and version 1's six steps) for a known user, a
    search and a cold-start user; a user's online tail read from the event log on every
    request (read-your-writes); bad requests answered INVALID_ARG while the step serves on;
    the retrieval metrics under the step's name."""
    users = np.load(mixed_repo / contract.FEATURES_MODEL / "2" / contract.USER_IDS_FILE)
    items = np.load(mixed_repo / contract.FEATURES_MODEL / "2" / contract.ITEM_IDS_FILE)[:60]
    require_tritonserver()
    url = f"sqlite://{tmp_path / 'events.db'}"
    log = open_event_log(url)
    reference = InProcessPipeline.from_repo(
        mixed_repo, 2, tails=OnlineTails.open(url, mixed_repo, 2, DEFAULT_MAX_TAIL_EVENTS)
    )
    config = TritonConfig(
        repo=mixed_repo, wait_models=(contract.ENSEMBLE_MODEL, "seminar_v1"),
        log_path=tmp_path / "triton.log", event_log=url,
    )  # fmt: skip
    with TritonServer(config) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        clicker = int(users[5])
        before = score(client, clicker, "", items)
        log.append(
            [Event(f"fused-{n}", clicker, int(items[n]), "", EventType.REC, True) for n in range(5)]
        )
        after = score(client, clicker, "", items)
        assert np.abs(after - reference.score(clicker, "", items)).max() <= ATOL
        assert np.abs(after - before).max() > 10 * ATOL, "the clicks did not reach the score"
        for user, query in ((int(users[3]), ""), (int(users[7]), QUERY), (10**12, "")):
            want = reference.score(user, query, items)
            fused = score(client, user, query, items)
            steps = score(client, user, query, items, model="seminar_v1")
            assert np.abs(fused - want).max() <= ATOL, (user, query)
            # Same run, same data: version 1's six steps score what the fused version 2 does.
            assert np.abs(steps - fused).max() <= ATOL, (user, query)

        for inputs, says in (
            (request_inputs(-5, "", items[:3]), "user_id must be >= 0"),
            (request_inputs(int(users[0]), "x" * 2000, items[:3]), "query"),
            (request_inputs(int(users[0]), b"\xff\xfe", items[:3]), "UTF-8"),
        ):
            with pytest.raises(InferenceServerException) as caught:
                client.infer(contract.ENSEMBLE_MODEL, inputs)
            assert "INVALID_ARG" in str(caught.value.status()) and says in caught.value.message()
        good = score(client, int(users[3]), "", items)  # the step still serves
        assert np.abs(good - reference.score(int(users[3]), "", items)).max() <= ATOL

        def pipeline_rows(metrics: str) -> float:
            return metric_total(metrics, "seminar_pq_rows_total", model=contract.PIPELINE_MODEL)

        metrics = metrics_once(server.metrics, lambda text: pipeline_rows(text) >= 4 * len(items))
        assert pipeline_rows(metrics) >= 4 * len(items), pipeline_rows(metrics)


def test_retiring_the_fused_version_takes_the_step_out_and_repins_the_steps_graph(
    mixed_repo: Path, tmp_path: Path
) -> None:
    repo = copy_repo(mixed_repo, tmp_path / "model_repository")
    retire.retire_version(retire.RetireRequest(repo, 2), lambda _line: None)
    assert not (repo / contract.PIPELINE_MODEL).exists(), "a model folder without versions"
    assert ensemble_steps(repo, contract.ENSEMBLE_MODEL) == [
        (name, 1) for name in contract.COMPOSING_MODELS
    ]


def test_the_gpu_target_refuses_the_fused_graph(tmp_path: Path) -> None:
    request = builder.BuildRequest(
        repo=tmp_path / "repo",
        version=1,
        target=contract.Target.GPU,
        serving=repository.ServingConfig(graph=contract.Graph.FUSED),
    )
    with pytest.raises(UsageError, match="--graph fused is the cpu target's"):
        builder.preflight(request, contract.PipelineDims(d=8, h=2, k=4, t=8))
