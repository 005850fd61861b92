"""`seminar retire --version N` on real repositories (versions 1 and 2 built by the real
`seminar build`) and real tritonservers: refusals, the offline retire of the version
`seminar` is pinned to, a retire interrupted after each of its steps, and a live retire with
traffic flowing and Triton's restricted repository API."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from seminar import contract
from seminar.build import builder, repository, retire
from seminar.cli import app
from seminar.errors import ArtifactError, ConflictError, ServiceError
from tests.support.build import BuiltRepo, build_cli, copy_repo, tree_digest
from tests.support.serving import require_serving_pieces, require_tritonserver, start_triton

pytestmark = pytest.mark.slow

ADMIN_KEY = "retire-test-key"


@pytest.fixture(scope="module")
def two_versions(model_repo: BuiltRepo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with versions 1 and 2 (`seminar` pinned to 2); read-only, copy it."""
    repo = copy_repo(model_repo, tmp_path_factory.mktemp("retire") / "repo")
    result = build_cli(model_repo.run, repo, 2, "--data", str(model_repo.data), "--no-polygraphy")
    assert result.exit_code == 0, result.output
    assert retire.contract_pin(repo) == 2
    return repo


def retire_cli(repo: Path, version: int, *extra: str):
    args = ["retire", "--repo", str(repo), "--version", str(version), *extra]
    return CliRunner().invoke(app, args)


def assert_servable(repo: Path) -> None:
    """What a fresh tritonserver needs to load every model of the repository: each model has a
    version folder, and every version an ensemble routes to exists."""
    for model_dir in sorted(d for d in repo.iterdir() if (d / contract.CONFIG_FILE).is_file()):
        versions = sorted(int(d.name) for d in model_dir.iterdir() if d.name.isdigit())
        assert versions, f"{model_dir.name} has no version folder"
        config = repository.parse_config(model_dir / contract.CONFIG_FILE)
        for step in config.ensemble_scheduling.step:
            target = repo / step.model_name / str(step.model_version)
            assert target.is_dir(), f"{model_dir.name} routes to missing {target}"


def assert_retired(repo: Path, retired: int, remaining: int) -> None:
    assert builder.existing_versions(repo) == [remaining]
    assert retire.contract_pin(repo) == remaining
    assert sorted(d.name for d in (repo / contract.ENSEMBLE_MODEL).iterdir() if d.is_dir()) == [
        str(remaining)
    ]
    assert not (repo / contract.pinned_ensemble_name(retired)).exists()
    for name in contract.COMPOSING_MODELS:
        assert not (repo / name / str(retired)).exists()
        assert (repo / name / str(remaining)).is_dir()
    assert not list(repo.parent.glob(f".{repo.name}.v*")), "trash folder left behind"
    assert_servable(repo)


def version_files(repo: Path, version: int) -> dict[str, str]:
    """Digest of the files of `version` that a retire of another version must not touch."""
    out = {}
    for name in (*contract.COMPOSING_MODELS, contract.pinned_ensemble_name(version)):
        folder = repo / name / str(version)
        out.update({f"{name}/{k}": v for k, v in tree_digest(folder).items()})
    return out


def test_retiring_the_last_or_an_unknown_version_is_refused(model_repo, tmp_path):
    repo = copy_repo(model_repo, tmp_path / "repo")
    before = tree_digest(repo)
    last = retire_cli(repo, 1)
    assert last.exit_code == ConflictError.exit_code == 5, last.output
    assert last.stderr.strip() == (
        f"error: version 1 is the only complete version in {repo}, so nothing would be left "
        "to serve; build another version first"
    )
    unknown = retire_cli(repo, 9)
    assert unknown.exit_code == ArtifactError.exit_code == 4, unknown.output
    assert unknown.stderr.strip() == f"error: version 9 is not in {repo} (complete versions: 1)"
    not_a_repo = retire_cli(tmp_path, 1)
    assert not_a_repo.exit_code == ArtifactError.exit_code == 4, not_a_repo.output
    assert "not a model repository" in not_a_repo.stderr
    assert tree_digest(repo) == before


def test_retire_offline_repins_seminar_and_a_fresh_tritonserver_serves_the_rest(
    two_versions, tmp_path
):
    repo = copy_repo(two_versions, tmp_path / "repo")
    kept = version_files(repo, 1)
    result = retire_cli(repo, 2)
    assert result.exit_code == 0, result.output
    steps = result.stderr.splitlines()
    assert steps[0] == "re-pinned seminar from version 2 to 1", steps
    assert "moved seminar_v2 out of the repository" in steps
    assert f"retired version 2 from {repo}; seminar now serves version 1" in result.stdout
    assert_retired(repo, retired=2, remaining=1)
    assert version_files(repo, 1) == kept
    # What `seminar serve` runs: model control none, every model loaded at start.
    require_serving_pieces(repo)
    with start_triton(repo, explicit=False) as server:
        assert server.model_ready(contract.ENSEMBLE_MODEL, 1)
        assert server.model_ready(contract.pinned_ensemble_name(1), 1)
        assert not server.model_ready(contract.PQ_RETRIEVAL_MODEL, 2)


def _interrupt_at(step: int):
    """A progress callback that stops the retire right after its `step`-th printed step."""
    seen: list[str] = []

    def progress(line: str) -> None:
        seen.append(line)
        if len(seen) == step:
            raise KeyboardInterrupt(f"simulated crash after: {line}")

    return progress, seen


def test_an_interrupted_retire_leaves_a_servable_repository_and_a_rerun_finishes(
    two_versions, tmp_path
):
    # How many steps an uninterrupted retire prints.
    probe = copy_repo(two_versions, tmp_path / "probe")
    every: list[str] = []
    retire.retire_version(retire.RetireRequest(probe, 2), every.append)
    assert every[0] == "re-pinned seminar from version 2 to 1" and len(every) >= 8, every

    for step in range(1, len(every) + 1):
        repo = copy_repo(two_versions, tmp_path / f"repo{step}")
        progress, seen = _interrupt_at(step)
        with pytest.raises(KeyboardInterrupt):
            retire.retire_version(retire.RetireRequest(repo, 2), progress)
        assert_servable(repo)
        assert retire.contract_pin(repo) == 1, f"after {seen[-1]!r}"
        if step == 1:
            # Right after the re-pin: a real tritonserver starts over this repository.
            require_serving_pieces(repo)
            with start_triton(repo, explicit=False) as server:
                assert server.model_ready(contract.ENSEMBLE_MODEL)
                assert server.model_ready(contract.pinned_ensemble_name(1), 1)
        leftovers = [repo / contract.pinned_ensemble_name(2), repo / contract.ENSEMBLE_MODEL / "2"]
        leftovers += [repo / name / "2" for name in contract.COMPOSING_MODELS]
        if any(folder.exists() for folder in leftovers):
            retire.retire_version(retire.RetireRequest(repo, 2), lambda _line: None)
        else:  # stopped after its last folder went: nothing left to do, and a rerun says so
            with pytest.raises(ArtifactError, match="version 2 is not in"):
                retire.retire_version(retire.RetireRequest(repo, 2), lambda _line: None)
        assert_retired(repo, retired=2, remaining=1)


@pytest.fixture
def restricted_triton(two_versions, tmp_path) -> Iterator:
    """Explicit model control, everything loaded, repository API behind the admin key."""
    from seminar.serving.triton import ModelControl, TritonConfig, TritonServer

    require_tritonserver()
    repo = copy_repo(two_versions, tmp_path / "repo")
    require_serving_pieces(repo)
    config = TritonConfig(
        repo=repo,
        model_control=ModelControl.EXPLICIT,
        load_models=("*",),
        wait_models=(
            contract.ENSEMBLE_MODEL,
            contract.pinned_ensemble_name(1),
            contract.pinned_ensemble_name(2),
        ),
        extra_args=(
            f"--http-restricted-api=model-repository:{retire.ADMIN_KEY_HEADER}={ADMIN_KEY}",
        ),
        log_path=tmp_path / "tritonserver.log",
    )
    with TritonServer(config) as server:
        yield server


def test_retire_live_keeps_serving_the_remaining_version(restricted_triton, tmp_path):
    import tritonclient.grpc as grpcclient

    from seminar.serving.client import request_inputs

    server = restricted_triton
    repo = server.repo
    key_file = tmp_path / "admin.key"
    key_file.write_text(ADMIN_KEY + "\n")

    # Without the key Triton refuses the repository API: refused before anything changes.
    before = tree_digest(repo)
    refused = retire_cli(repo, 2, "--server", server.http_url)
    assert refused.exit_code == ServiceError.exit_code == 6, refused.output
    assert "refused" in refused.stderr and "--admin-key-file" in refused.stderr
    assert tree_digest(repo) == before

    user = int(np.load(repo / contract.FEATURES_MODEL / "1" / contract.USER_IDS_FILE)[0])
    items = np.load(repo / contract.FEATURES_MODEL / "1" / contract.ITEM_IDS_FILE)[:20]
    outcomes: dict[str, list[tuple[str, str]]] = {contract.ENSEMBLE_MODEL: [], "seminar_v1": []}
    stop = threading.Event()

    def traffic(model: str) -> None:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        version = "1" if model == "seminar_v1" else ""
        while not stop.is_set():
            try:
                result = client.infer(model, request_inputs(user, "", items), model_version=version)
                outcomes[model].append(("ok", result.get_response().model_version))
            except grpcclient.InferenceServerException as exc:
                outcomes[model].append(("error", exc.message()))

    threads = [threading.Thread(target=traffic, args=(m,)) for m in outcomes]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)  # traffic on version 2 through `seminar`
        result = retire_cli(repo, 2, "--server", server.http_url, "--admin-key-file", str(key_file))
        time.sleep(0.5)  # traffic after the retire
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert result.exit_code == 0, result.output
    for model, seen in outcomes.items():
        errors = [message for status, message in seen if status == "error"]
        assert not errors, (model, errors[:3])
        assert len(seen) > 2, (model, seen)
    served = [version for _, version in outcomes[contract.ENSEMBLE_MODEL]]
    assert served[0] == "2" and served[-1] == "1", (served[0], served[-1])
    assert {version for _, version in outcomes["seminar_v1"]} == {"1"}
    steps = result.stderr
    assert "seminar version 1 is READY" in steps and "unloaded seminar_v2" in steps, steps
    assert server.model_ready(contract.ENSEMBLE_MODEL, 1)
    assert not server.model_ready(contract.pinned_ensemble_name(2))
    for name in contract.COMPOSING_MODELS:
        assert server.model_ready(name, 1) and not server.model_ready(name, 2), name
    assert_retired(repo, retired=2, remaining=1)
