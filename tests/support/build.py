"""Fixtures for the build tests (owned by that area).

`model_repo`: a cpu Triton model repository with version 1 built by `seminar build` (the real
command, in-process) from the `quick_run` fixture on real MovieLens. Session-scoped and
read-only for its users: tests that change a repository copy it first (`copy_repo`).

Concurrency tests run real builds in other processes: `start_build_process` (the console
command) and `python -m tests.support.build --gate ...` (the same command with its commit
held at a gate, so that two builds interleave the same way on every run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from seminar.manifest import sha256_file

CHECKOUT = Path(__file__).resolve().parents[2]

# Small PQ codebooks keep the fixture fast (4-bit codes = faiss fast-scan layout); the
# build's defaults (16 x 8 bit) are exercised by `seminar build` without these flags. The
# six-steps graph: the serving tests reach each step's own Triton model through the ensemble
# (stalls, per-step errors and statistics); the cpu default, the fused graph, has its own
# tests (tests/test_serving_fused.py) and runs in `make demo`.
FIXTURE_BUILD_ARGS = (
    "--pq-bits", "4", "--pq-iters", "5", "--pq-subspaces", "8", "--graph", "steps",
)  # fmt: skip


@dataclass(frozen=True)
class BuiltRepo:
    repo: Path  # the model repository (version 1 built)
    run: Path  # the run it was built from
    data: Path  # the prepared dataset of that run
    version: int = 1


def build_cli(run: Path, repo: Path, version: int, *extra: str):
    """Invoke `seminar build` in-process; returns typer's Result."""
    from typer.testing import CliRunner

    from seminar.cli import app

    args = ["build", "--run", str(run), "--repo", str(repo), "--version", str(version)]
    return CliRunner().invoke(app, [*args, *FIXTURE_BUILD_ARGS, *extra])


def copy_repo(built: BuiltRepo | Path, dest: Path) -> Path:
    """A private copy of a repository (the session's by default) that a test may change."""
    source = built.repo if isinstance(built, BuiltRepo) else built
    return Path(shutil.copytree(source, dest, symlinks=True))


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file below root (Triton's __pycache__ excluded)."""
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def _process_env() -> dict[str, str]:
    # Two builds share the machine's cores: one intra-op thread each avoids oversubscription.
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def build_args(run: Path, repo: Path, version: int, data: Path) -> list[str]:
    """`seminar build` arguments of a small, fast build (no polygraphy)."""
    return [
        "build",
        "--run",
        str(run),
        "--repo",
        str(repo),
        "--version",
        str(version),
        "--data",
        str(data),
        "--no-polygraphy",
        *FIXTURE_BUILD_ARGS,
    ]


def start_build_process(run: Path, repo: Path, version: int, data: Path) -> subprocess.Popen:
    """`seminar build` in a process of its own (its pid is the Popen's), output piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "seminar.cli", *build_args(run, repo, version, data)],
        cwd=CHECKOUT,
        env=_process_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def start_gated_build(
    run: Path, repo: Path, version: int, data: Path, gates: Path, wait_for: str
) -> subprocess.Popen:
    """A build process whose commit first announces `at-commit-<version>` in `gates`, then
    waits (at most GATE_TIMEOUT_S) for the file `wait_for` there, and after committing
    writes `committed-<version>`."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.build",
            "--gates",
            str(gates),
            "--wait-for",
            wait_for,
            "--",
            *build_args(run, repo, version, data),
        ],
        cwd=CHECKOUT,
        env=_process_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# Long enough for the other build to reach its own commit on a loaded 2-core machine; a
# build holding the repository lock waits this long for one that cannot get there.
GATE_TIMEOUT_S = 20.0


def _gated_build_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gates", type=Path, required=True)
    parser.add_argument("--wait-for", required=True)
    parser.add_argument("cli", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cli = args.cli[1:] if args.cli[:1] == ["--"] else args.cli
    version = cli[cli.index("--version") + 1]

    from seminar.build import builder
    from seminar.cli import app

    real_commit = builder.commit

    def gated_commit(request, staging):
        (args.gates / f"at-commit-{version}").touch()
        deadline = time.monotonic() + GATE_TIMEOUT_S
        while not (args.gates / args.wait_for).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        real_commit(request, staging)
        (args.gates / f"committed-{version}").touch()

    builder.commit = gated_commit
    try:
        app(cli, prog_name="seminar")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


@pytest.fixture(scope="session")
def model_repo(
    quick_run: Path, movielens_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> BuiltRepo:
    """cpu model repository with version 1 built from `quick_run`."""
    run = quick_run
    repo = tmp_path_factory.mktemp("model_repo") / "model_repository"
    result = build_cli(run, repo, 1, "--data", str(movielens_data))
    if result.exit_code != 0:
        raise RuntimeError(f"seminar build failed (exit {result.exit_code}):\n{result.output}")
    return BuiltRepo(repo=repo, run=run, data=movielens_data)


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


@pytest.fixture(scope="session")
def mixed_repo(model_repo: BuiltRepo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of `model_repo` plus a version 2 built with the fused graph (the cpu default:
    its `pipeline` step beside the six steps' version 2). Tests copy it before changing it."""
    from tests.support.serving import require_serving_pieces

    repo = copy_repo(model_repo, tmp_path_factory.mktemp("fused") / "model_repository")
    result = build_cli(
        model_repo.run, repo, 2, "--data", str(model_repo.data), "--no-polygraphy",
        "--graph", "fused",
    )  # fmt: skip
    if result.exit_code != 0:
        raise RuntimeError(f"seminar build --graph fused failed:\n{result.output}")
    require_serving_pieces(repo)
    return repo


if __name__ == "__main__":
    sys.exit(_gated_build_main(sys.argv[1:]))
