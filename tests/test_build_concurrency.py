"""Builds of one repository at the same time, as real processes: the repository lock makes
them run one after the other, so neither result is silently replaced and the contract
ensemble `seminar` ends pinned to the newest version."""

from __future__ import annotations

from pathlib import Path

import pytest

from seminar import contract, manifest
from seminar.build import builder, repository
from seminar.errors import ConflictError
from tests.support.build import BuiltRepo, copy_repo, start_build_process, start_gated_build

pytestmark = pytest.mark.slow

TIMEOUT_S = 600


def _pins(repo: Path, ensemble: str) -> set[int]:
    config = repository.parse_config(repo / ensemble / contract.CONFIG_FILE)
    return {step.model_version for step in config.ensemble_scheduling.step}


def _finish(processes) -> list[tuple[int, str, str]]:
    out = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
        out.append((process.returncode, stdout, stderr))
    return out


def test_two_builds_of_one_version_at_once_one_lands_the_other_is_refused(
    model_repo: BuiltRepo, tmp_path: Path
) -> None:
    repo = copy_repo(model_repo, tmp_path / "repo")
    processes = [
        start_build_process(model_repo.run, repo, 7, model_repo.data),
        start_build_process(model_repo.run, repo, 7, model_repo.data),
    ]
    results = _finish(processes)
    codes = [code for code, _, _ in results]
    assert sorted(codes) == [0, ConflictError.exit_code], results
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    refusal = results[loser][2]
    # The loser waited for the winner (and said for whom), then ran its own preflight.
    assert f"locked by pid {processes[winner].pid} (build of version 7)" in refusal, refusal
    assert "error: version 7 exists" in refusal and "--force" in refusal, refusal
    assert "Traceback" not in refusal
    assert builder.existing_versions(repo) == [1, 7]
    for name in contract.COMPOSING_MODELS:
        manifest.verify_manifest(repo / name / "7")
    assert not list(tmp_path.glob(".repo.v*")), "staging dir left behind"


def test_builds_of_8_and_9_at_once_leave_seminar_pinned_to_9(
    model_repo: BuiltRepo, tmp_path: Path
) -> None:
    """The interleaving that used to pin `seminar` to 8: version 9 commits while version 8,
    already staged with the pin it computed, waits to commit. The gates force that order
    when nothing serializes the builds; with the lock, whichever build goes second sees the
    other's result."""
    repo = copy_repo(model_repo, tmp_path / "repo")
    gates = tmp_path / "gates"
    gates.mkdir()
    processes = [
        start_gated_build(model_repo.run, repo, 8, model_repo.data, gates, "committed-9"),
        start_gated_build(model_repo.run, repo, 9, model_repo.data, gates, "at-commit-8"),
    ]
    results = _finish(processes)
    assert [code for code, _, _ in results] == [0, 0], results
    assert builder.existing_versions(repo) == [1, 8, 9]
    assert _pins(repo, contract.ENSEMBLE_MODEL) == {9}
    served = max(
        int(d.name) for d in (repo / contract.ENSEMBLE_MODEL).iterdir() if d.name.isdigit()
    )
    assert served == 9, "the highest `seminar` folder (the one Triton serves) is 9"
    for version in (8, 9):
        assert _pins(repo, contract.pinned_ensemble_name(version)) == {version}
