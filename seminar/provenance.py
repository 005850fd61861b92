"""Where a result came from: the machine and the code revision, named next to every number
(benchmark reports) and artifact (build.json, model cards)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

# The checkout this code runs from (editable install): where `git` looks for the revision.
CHECKOUT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def git_revision(checkout: Path = CHECKOUT) -> str:
    """The commit of the checkout, "+dirty" when tracked files changed, "unknown" outside git."""
    try:
        revision = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (revision or "unknown") + ("+dirty" if dirty else "")
