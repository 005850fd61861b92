"""`seminar bench pq` refuses bad input with one sentence and a non-zero exit."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from seminar.bench.pq.config import BenchConfig
from seminar.cli import app
from seminar.errors import ArtifactError, DataError


def test_bench_pq_rejects_missing_run(tmp_path) -> None:
    result = CliRunner().invoke(app, ["bench", "pq", "--quick", "--run", str(tmp_path / "nope")])
    assert result.exit_code == ArtifactError.exit_code == 4
    assert "not a run directory" in result.output
    assert "Traceback" not in result.output


def test_bench_pq_rejects_missing_data(tmp_path) -> None:
    result = CliRunner().invoke(
        app, ["bench", "pq", "--quick", "--run", str(tmp_path), "--data", str(tmp_path / "nope")]
    )
    assert result.exit_code == DataError.exit_code == 3
    assert "not a prepared dataset directory" in result.output


def test_bench_pq_help_reads_like_docs() -> None:
    result = CliRunner().invoke(app, ["bench", "pq", "--help"])
    assert result.exit_code == 0
    assert "--quick" in result.output and "recall" in result.output


def test_bench_config_rejects_bad_fields() -> None:
    with pytest.raises(ValueError, match="runs"):
        BenchConfig(runs=0)
    with pytest.raises(ValueError, match="lengths"):
        BenchConfig(lengths=(0,))
