"""The layout rule, checked on every import of the code: the library below, the stages above.

`seminar/` is the library that every stage imports and that imports no stage; every other
top-level code folder is one stage of the data flow, imported as `seminar.<folder>`, and imports
only the library and the stages upstream of it. Function-level (lazy) imports count too.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Bottom to top: each folder may import the ones before it, never one after it.
LAYERS = ("seminar", "training", "build", "serving", "clients", "bench", "cli")
STAGES = LAYERS[1:]


def layer_of_module(module: str) -> str | None:
    """The layer an absolute import names, or None for anything outside this project."""
    parts = module.split(".")
    if parts[0] != "seminar":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else "seminar"


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in a file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from seminar import training` names a stage through the library's namespace
            if node.module == "seminar":
                found += [(node.lineno, f"seminar.{alias.name}") for alias in node.names]
    return found


def violations(root: Path = ROOT) -> list[str]:
    out = []
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            rank = LAYERS.index(layer)
            for line, module in imports(path):
                target = layer_of_module(module)
                if target is not None and LAYERS.index(target) > rank:
                    out.append(
                        f"{path.relative_to(root)}:{line}: {layer} imports {module} ({target})"
                    )
    return out


def test_no_layer_imports_one_above_it() -> None:
    found = violations()
    assert found == [], "imports against the layout rule:\n" + "\n".join(found)


def test_the_check_catches_a_planted_upward_import(tmp_path: Path) -> None:
    for layer in LAYERS:
        (tmp_path / layer).mkdir()
    (tmp_path / "seminar" / "lazy.py").write_text(
        "def f():\n    from seminar.training import trainer\n    return trainer\n"
    )
    (tmp_path / "build" / "ok.py").write_text("from seminar.training import checkpoint\n")
    (tmp_path / "training" / "up.py").write_text("from seminar import serving\n")
    assert violations(tmp_path) == [
        "seminar/lazy.py:2: seminar imports seminar.training (training)",
        "training/up.py:1: training imports seminar.serving (serving)",
    ]


def test_every_package_folder_is_installed_under_its_layer_name() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = setuptools["package-dir"]
    assert mapping == {"seminar": "seminar", **{f"seminar.{s}": s for s in STAGES}}
    folders = set()
    for layer in LAYERS:
        for init in (ROOT / layer).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / layer).parts
            folders.add(".".join(("seminar", *((layer,) if layer != "seminar" else ()), *relative)))
    assert sorted(setuptools["packages"]) == sorted(folders)


@pytest.mark.parametrize("folder", ["seminar", *STAGES])
def test_readme_names_every_layer_and_the_rule(folder: str) -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"`{folder}/`" in readme
    assert "imports only the library and the stages upstream of it" in readme


def test_every_image_that_installs_the_package_copies_every_layer() -> None:
    for dockerfile in sorted((ROOT / "docker").glob("*/Dockerfile")):
        text = dockerfile.read_text()
        if "pip install --no-cache-dir --no-deps ." not in text:
            continue
        copied = {line.split()[1] for line in text.splitlines() if line.startswith("COPY ")}
        missing = [layer for layer in LAYERS if layer not in copied]
        assert not missing, f"{dockerfile.relative_to(ROOT)} does not copy {missing}"
