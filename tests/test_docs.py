"""Every path the repository cites exists: a user's clone must carry every document it names.

Scanned: the Markdown files (README.md, docs/, the per-folder READMEs, reports/), the comments,
docstrings and `help=` texts of every Python file, and the text of docker/, the Makefile,
pyproject.toml and CI. Checked:
- repository paths (`serving/supervisor.py`, `docs/deploy.md`, `serving/backends/`, globs such
  as `tests/test_docker*.py`) against the working tree; in a folder's README.md or
  `__init__.py`, a bare `name.py` against that folder;
- bare document names (`style.md`) against every file name in the repository;
- module paths (`seminar.training.trainer`, `seminar.data.dataset.PreparedDataset.load`)
  through importlib, and a trailing attribute against the module's source;
- section references (`docs/design.md section 5`, `docs/serving.md "Gateway (contract)"`, and a
  bare "section 7" inside a document with numbered sections) against the document's headings.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import io
import re
import subprocess
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Written by commands or by the user, never committed: a citation of these names what a run makes.
GENERATED = (
    "model_repository/",  # `seminar build` output (only its README.md is tracked)
    "docker/secrets/admin-key",  # the key a deployment creates
    "model_card.md",  # written into each built version
    "report.md",  # written by `seminar ab report` under its --out folder
    "config.pbtxt",  # a model's folder in a built repository (`seminar/config.pbtxt`)
)
# The gRPC package of ranker.proto: a protobuf name, not a Python module.
NOT_MODULES = ("seminar.v1",)
FILE_SUFFIXES = (".md", ".py", ".yaml", ".yml", ".toml", ".sh", ".proto", ".pbtxt")
FILE_NAMES = ("Dockerfile", "Makefile", "run")
FILE_EXTENSIONS = ("md", "json", "yaml", "yml", "pbtxt", "py", "proto")  # `seminar.json` is a file
SKIPPED = ("datasets/", "docker/schemas/", "clients/proto/ranker_pb2", "tests/test_docs.py")

# A path is not preceded by what would make it part of a URL, an absolute path or a variable.
PATH = re.compile(
    r"(?<![\w./:~$-])(?>((?:[\w.-]+/)+[\w.*-]*))(?P<braces>\{[\w.,]+\})?(?P<colon>:)?"
)
BARE_DOC = re.compile(r"(?<![\w./-])([\w-]*[a-z][\w-]*\.md)\b")  # not a placeholder: OUT.md
BARE_PY = re.compile(r"(?<![\w./-])([\w-]+\.py)\b")
MODULE = re.compile(r"(?<![\w./-])(seminar(?:\.[A-Za-z_]\w*)+)")
DOC = r"(?P<doc>(?:[\w-]+/)*[\w-]+\.md)`?(?:\]\([^)]*\))?"
NUMBERED = re.compile(DOC + r",?\s+sections?\s+(?P<nums>\d+(?:(?:,\s*|,?\s+and\s+)\d+)*)")
TITLED = re.compile(DOC + r",?\s+[\"“](?P<title>[^\"”\n]+)[\"”]")
BARE_SECTION = re.compile(r"(?<![.\w/`])sections?\s+(?P<nums>\d+(?:(?:,\s*|,?\s+and\s+)\d+)*)")


@dataclass(frozen=True)
class Text:
    path: str  # repository-relative
    line: int
    text: str


def repository_files(root: Path) -> list[str]:
    try:
        listed = subprocess.run(
            ["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        listed = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
    return sorted(f for f in listed if (root / f).is_file())


def scanned(root: Path) -> list[str]:
    return [
        f
        for f in repository_files(root)
        if not f.startswith(SKIPPED)
        and (f.endswith(FILE_SUFFIXES) or f.split("/")[-1] in FILE_NAMES)
    ]


def texts(root: Path, relative: str) -> list[Text]:
    """The prose of a file: all of it, or what a Python file says to its reader.

    That is its comments, docstrings and `help=` texts; other string literals are data (output
    paths, logger names, planted test inputs), not citations.
    """
    source = (root / relative).read_text()
    if not relative.endswith(".py"):
        return [Text(relative, 1, source)]
    found = [
        Text(relative, token.start[0], token.string)
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Expr) or (isinstance(node, ast.keyword) and node.arg == "help"):
            value = node.value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                found.append(Text(relative, value.lineno, value.value))
    return sorted(found, key=lambda text: text.line)


def line_of(text: Text, offset: int) -> int:
    return text.line + text.text.count("\n", 0, offset)


def headings(document: Path) -> list[str]:
    """Markdown headings, outside code blocks (where `#` starts a shell comment)."""
    found, fenced = [], False
    for line in document.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#+\s+(.+?)\s*$", line)):
            found.append(match.group(1))
    return found


def section_numbers(document: Path) -> set[str]:
    return {m.group(1) for h in headings(document) if (m := re.match(r"(\d+)\.", h))}


def numbers(group: str) -> list[str]:
    return re.findall(r"\d+", group)


def defined_names(tree: ast.AST) -> dict[str, ast.AST]:
    """Names bound at the top of a module or class body (definitions, assignments, imports)."""
    names: dict[str, ast.AST] = {}
    for node in getattr(tree, "body", []):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        names[name.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                names[(alias.asname or alias.name).split(".")[0]] = node
        elif isinstance(node, ast.If | ast.Try):
            names.update(defined_names(node))
    return names


def module_problem(dotted: str) -> str | None:
    """Why `dotted` (a module, or a module then attributes) names nothing, or None."""
    parts = dotted.split(".")
    spec = None
    for end in range(len(parts), 0, -1):
        try:
            spec = importlib.util.find_spec(".".join(parts[:end]))
        except (ImportError, ValueError):
            spec = None
        if spec is not None:
            break
    if spec is None or spec.origin is None:
        return f"no module {dotted}"
    scope: ast.AST = ast.parse(Path(spec.origin).read_text())
    for depth, attribute in enumerate(parts[end:]):
        names = defined_names(scope)
        if "__getattr__" in names and depth == 0:  # a module whose names resolve lazily
            module = importlib.import_module(".".join(parts[:end]))
            return None if hasattr(module, attribute) else f"{module.__name__} has no {attribute!r}"
        found = names.get(attribute)
        if found is None:
            module = ".".join(parts[: end + depth])
            return f"{module} has no module or attribute {attribute!r}"
        if not isinstance(found, ast.ClassDef):
            return None  # a function's or a value's attributes are not checked
        scope = found
    return None


def path_problem(root: Path, cited: str) -> str | None:
    cited = cited.rstrip(".")
    generated = any(cited.startswith(g) or cited.endswith(f"/{g}") for g in GENERATED)
    if generated and cited != "model_repository/README.md":
        return None
    if "*" in cited:
        return None if list(root.glob(cited)) else f"nothing matches {cited}"
    return None if (root / cited).exists() else f"no file {cited}"


@dataclass(frozen=True)
class Repository:
    root: Path
    top: frozenset[str]  # top-level folders
    names: frozenset[str]  # every file name, for bare document names
    images: frozenset[str]  # Docker image names (`seminar/gateway`): not paths


def images(root: Path) -> frozenset[str]:
    """The image names docker/ builds (`docker build -t NAME`) or runs (`image: NAME`)."""
    found: set[str] = set()
    for path in (root / "docker").rglob("*"):
        if path.is_file() and path.suffix != ".json":
            found.update(re.findall(r"(?:image:\s*|-t\s+)\"?([\w.-]+/[\w.-]+)", path.read_text()))
    return frozenset(found)


def path_problems(repo: Repository, text: Text, relative: str) -> Iterator[tuple[int, str]]:
    for match in PATH.finditer(text.text):
        cited = match.group(1)
        parts = cited.split("/")
        placeholder = any(re.fullmatch(r"[A-Z]|\.\.?", p) for p in parts if p)
        # `seminar/gateway:0.1.0`, `seminar/version: "1"`, `docker/dockerfile:1`: an image name
        # or a label key, not a file
        named = match.group("colon") and "." not in parts[-1]
        image = cited in repo.images
        if parts[0] not in repo.top or placeholder or named or image:
            continue
        braces = match.group("braces")
        for variant in braces[1:-1].split(",") if braces else [""]:
            if problem := path_problem(repo.root, cited + variant):
                yield match.start(), problem
    if relative.endswith(("/README.md", "/__init__.py")):  # a folder's map of its own files
        folder = relative.rsplit("/", 1)[0]
        for match in BARE_PY.finditer(text.text):
            if problem := path_problem(repo.root, f"{folder}/{match.group(1)}"):
                yield match.start(), problem
    for match in BARE_DOC.finditer(text.text):
        if match.group(1) not in repo.names and match.group(1) not in GENERATED:
            yield match.start(), f"no document named {match.group(1)}"


def module_problems(text: Text) -> Iterator[tuple[int, str]]:
    for match in MODULE.finditer(text.text):
        dotted = match.group(1).rstrip(".")
        if dotted.startswith(NOT_MODULES) or dotted.split(".")[-1] in FILE_EXTENSIONS:
            continue
        if problem := module_problem(dotted):
            yield match.start(), problem


def section_problems(repo: Repository, text: Text, relative: str) -> Iterator[tuple[int, str]]:
    for match in NUMBERED.finditer(text.text):
        document = repo.root / match.group("doc")
        if document.is_file():  # a missing document is reported as a missing path
            missing = set(numbers(match.group("nums"))) - section_numbers(document)
            if missing:
                yield match.start(), f"{match.group('doc')} has no section {sorted(missing)}"
    for match in TITLED.finditer(text.text):
        document = repo.root / match.group("doc")
        # A heading, or the caption of a report's table: the quoted words must be there.
        if document.is_file() and match.group("title").lower() not in document.read_text().lower():
            yield match.start(), f"{match.group('doc')} has no {match.group('title')!r}"
    here = relative.endswith(".md") and section_numbers(repo.root / relative)
    for match in BARE_SECTION.finditer(text.text) if here else ():
        if re.search(r"\.md`?(?:\]\([^)]*\))?,?\s*$", text.text[: match.start()]):
            continue  # "docs/design.md section 5" names another document's section
        if missing := set(numbers(match.group("nums"))) - here:
            yield match.start(), f"{relative} has no section {sorted(missing)}"


def problems(root: Path = ROOT) -> list[str]:
    files = repository_files(root)
    repo = Repository(
        root,
        top=frozenset(f.split("/")[0] for f in files if "/" in f),
        names=frozenset(Path(f).name for f in files),
        images=images(root),
    )
    out = []
    for relative in scanned(root):
        for text in texts(root, relative):
            found = chain(
                path_problems(repo, text, relative),
                module_problems(text),
                section_problems(repo, text, relative),
            )
            out += [f"{relative}:{line_of(text, offset)}: {problem}" for offset, problem in found]
    return out


def test_every_cited_path_module_and_section_exists() -> None:
    found = problems()
    assert found == [], "citations of things that do not exist:\n" + "\n".join(found)


def test_the_check_catches_planted_citations(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "serving").mkdir()
    (tmp_path / "docs" / "design.md").write_text("# Design\n\n## 1. Data\n\nSee section 2.\n")
    (tmp_path / "serving" / "README.md").write_text("| `supervisor.py` | the supervisor |\n")
    (tmp_path / "serving" / "run.py").write_text(
        '"""Runs it (docs/design.md section 1; docs/design.md section 4)."""\n'
        "# docs/serving.md and style.md; seminar.training.ddp, not seminar.training.trainer\n"
        'OPTION = option(help="docs/design.md, \\"Data\\" and docs/design.md \\"Serving\\"")\n'
        'NOT_PROSE = "docs/nothing.md"\n'
    )
    assert problems(tmp_path) == [
        "docs/design.md:5: docs/design.md has no section ['2']",
        "serving/README.md:1: no file serving/supervisor.py",
        "serving/run.py:1: docs/design.md has no section ['4']",
        "serving/run.py:2: no file docs/serving.md",
        "serving/run.py:2: no document named style.md",
        "serving/run.py:2: seminar.training has no module or attribute 'ddp'",
        "serving/run.py:3: docs/design.md has no 'Serving'",
    ]


@pytest.mark.parametrize(
    "dotted",
    ["seminar.training.trainer", "seminar.data.dataset.PreparedDataset.load", "seminar.contract"],
)
def test_real_module_paths_resolve(dotted: str) -> None:
    assert module_problem(dotted) is None
