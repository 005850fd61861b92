"""Fixtures for the build tests (owned by that area).

`model_repo`: a cpu Triton model repository with version 1 built by `seminar build` (the real
command, in-process) from the `quick_run` fixture on real MovieLens. Session-scoped and
read-only for its users: tests that change a repository copy it first (`copy_repo`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

# Small PQ codebooks keep the fixture fast (4-bit codes = faiss fast-scan layout); the
# build's defaults (16 x 8 bit) are exercised by `seminar build` without these flags.
FIXTURE_BUILD_ARGS = ("--pq-bits", "4", "--pq-iters", "5", "--pq-subspaces", "8")


@dataclass(frozen=True)
class BuiltRepo:
    repo: Path  # the model repository (version 1 built)
    run: Path  # the run it was built from
    data: Path  # the prepared dataset of that run
    version: int = 1

    @property
    def path(self) -> Path:
        return self.repo


def run_dir(quick_run) -> Path:
    """The run directory of the `quick_run` fixture (a Path or an object carrying one)."""
    if isinstance(quick_run, str | Path):
        return Path(quick_run)
    for name in ("path", "run_dir", "run", "out"):
        value = getattr(quick_run, name, None)
        if isinstance(value, str | Path):
            return Path(value)
    raise TypeError(f"cannot find a run directory in quick_run={quick_run!r}")


def build_cli(run: Path, repo: Path, version: int, *extra: str):
    """Invoke `seminar build` in-process; returns typer's Result."""
    from typer.testing import CliRunner

    from seminar.cli import app

    args = ["build", "--run", str(run), "--repo", str(repo), "--version", str(version)]
    return CliRunner().invoke(app, [*args, *FIXTURE_BUILD_ARGS, *extra])


def copy_repo(built: BuiltRepo, dest: Path) -> Path:
    """A private copy of the session repository that a test may change."""
    return Path(shutil.copytree(built.repo, dest, symlinks=True))


@pytest.fixture(scope="session")
def model_repo(quick_run, movielens_data, tmp_path_factory: pytest.TempPathFactory) -> BuiltRepo:
    """cpu model repository with version 1 built from `quick_run` (docs/design.md section 6)."""
    run = run_dir(quick_run)
    repo = tmp_path_factory.mktemp("model_repo") / "model_repository"
    result = build_cli(run, repo, 1, "--data", str(movielens_data))
    if result.exit_code != 0:
        raise RuntimeError(f"seminar build failed (exit {result.exit_code}):\n{result.output}")
    return BuiltRepo(repo=repo, run=run, data=Path(movielens_data))


@pytest.fixture(scope="session")
def model_repo_two_versions(
    model_repo: BuiltRepo, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A copy of `model_repo` plus a version 2 built from the same run: two A/B arms."""
    repo = copy_repo(model_repo, tmp_path_factory.mktemp("two_versions") / "model_repository")
    result = build_cli(model_repo.run, repo, 2, "--data", str(model_repo.data))
    if result.exit_code != 0:
        raise RuntimeError(f"seminar build --version 2 failed:\n{result.output}")
    return repo
