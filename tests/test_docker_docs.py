"""docs/deploy.md: the sections the deployment issue asks for, and the paths it names exist."""

from __future__ import annotations

import re

from tests.support.docker import REPO

DEPLOY = REPO / "docs" / "deploy.md"


def test_deploy_doc_has_the_required_sections() -> None:
    headings = re.findall(r"^## (.+)$", DEPLOY.read_text(), flags=re.MULTILINE)
    for required in (
        "Building the images",
        "Running with compose",
        "Kubernetes",
        "Rolling out a new version under A/B",
        "Reading the dashboard",
        "What was and was not run on real hardware",
    ):
        assert required in headings, f"docs/deploy.md lacks '## {required}'"


def test_paths_named_in_deploy_doc_exist() -> None:
    named = set(re.findall(r"`((?:docker|docs|tests)/[\w./-]*)`", DEPLOY.read_text()))
    assert named, "no repository paths found: the pattern is broken"
    missing = sorted(p for p in named if "*" not in p and not (REPO / p).exists())
    assert not missing, f"docs/deploy.md names missing paths: {missing}"


def test_rollout_loads_every_model_of_a_build() -> None:
    """The repository-API loop in "Rolling out" names the build's models, composing first."""
    from seminar.contract import COMPOSING_MODELS, ENSEMBLE_MODEL, pinned_ensemble_name

    (loop,) = re.findall(r"for m in ([\w ]+); do", DEPLOY.read_text())
    assert loop.split() == [*COMPOSING_MODELS, pinned_ensemble_name(2), ENSEMBLE_MODEL]
