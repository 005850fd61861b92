"""The console command mounts every area's sub-commands."""

from typer.testing import CliRunner

from seminar.cli import app


def test_help_lists_every_stage() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("data", "train", "evaluate", "score", "build", "serve", "gateway", "bench"):
        assert command in result.output
