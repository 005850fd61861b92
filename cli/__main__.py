"""`python -m seminar.cli ...`: the `seminar` command, for child processes of this interpreter."""

from seminar.cli import app

app()
