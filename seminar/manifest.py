"""The one manifest format of every artifact folder, and the one place files are hashed.

A folder's manifest.json lists its files by relative path, each with its sha256 and size and,
for a .npy file, its shape and dtype (read from the header, no data loaded), next to whatever
else the writer records about the folder (`fields`: a PQ artifact's format, config, alpha):

    {"schema": 1, "files": {"pq/codes.npy": {"sha256": ..., "bytes": 1024,
                                             "shape": [128, 8], "dtype": "uint8"}}, ...}

build/ writes one per model version (over every file below it), seminar.pq one per artifact
and store folder; every Triton backend verifies its version at load. numpy only: the
`features` model verifies its files without importing torch.

Manifests written before this format still read: a PQ artifact folder of format
`seminar-pq/1` (`files`: name -> sha256) and a sequence store of format `seminar-pq-store/1`
or `/2` (`arrays`: name -> {file, shape, dtype, sha256}); they recorded no sizes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from seminar import contract
from seminar.errors import ArtifactError

SCHEMA = 1
_BLOCK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def npy_header(path: Path) -> tuple[tuple[int, ...], str]:
    """(shape, dtype) of a .npy file from its header alone."""
    with Path(path).open("rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        except ValueError as exc:
            raise ArtifactError(f"{path}: not a .npy file ({exc})") from exc
    return tuple(int(n) for n in shape), str(dtype)


@dataclass(frozen=True)
class FileEntry:
    """What a manifest records of one file."""

    sha256: str
    size: int | None  # bytes; None in the older PQ formats, which did not record it
    shape: tuple[int, ...] | None = None  # .npy files only
    dtype: str | None = None  # .npy files only

    @classmethod
    def of(cls, path: Path) -> FileEntry:
        path = Path(path)
        shape, dtype = npy_header(path) if path.suffix == ".npy" else (None, None)
        return cls(sha256_file(path), path.stat().st_size, shape, dtype)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> FileEntry:
        shape = raw.get("shape")
        return cls(
            sha256=str(raw["sha256"]),
            size=None if raw.get("bytes") is None else int(raw["bytes"]),
            shape=None if shape is None else tuple(int(n) for n in shape),
            dtype=raw.get("dtype"),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sha256": self.sha256}
        if self.size is not None:
            out["bytes"] = self.size
        if self.shape is not None:
            out["shape"] = list(self.shape)
            out["dtype"] = self.dtype
        return out


@dataclass(frozen=True)
class Manifest:
    """A folder's manifest: its files and the writer's other fields."""

    folder: Path
    files: Mapping[str, FileEntry]  # relative posix path -> entry
    fields: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def path(self) -> Path:
        return self.folder / contract.MANIFEST_FILE

    def to_json(self) -> dict[str, Any]:
        files = {name: entry.to_json() for name, entry in sorted(self.files.items())}
        return {**self.fields, "schema": SCHEMA, "files": files}

    def entry(self, name: str) -> FileEntry:
        """The entry of file `name`; ArtifactError when the manifest does not list it."""
        try:
            return self.files[name]
        except KeyError:
            raise ArtifactError(f"{self.path}: lists no file {name!r}") from None

    def file(self, name: str) -> Path:
        """The path of listed file `name`; ArtifactError when it is not listed or missing."""
        self.entry(name)
        path = self.folder / name
        if not path.is_file():
            raise ArtifactError(f"{path}: listed in {self.path} but missing")
        return path

    def check_array(self, name: str, array: np.ndarray) -> None:
        """Check a loaded .npy array against its entry's shape and dtype."""
        entry = self.entry(name)
        if entry.shape is not None and (
            tuple(array.shape) != entry.shape or str(array.dtype) != entry.dtype
        ):
            raise ArtifactError(
                f"{self.folder / name}: shape/dtype {tuple(array.shape)}/{array.dtype} disagree "
                f"with {self.path} ({entry.shape}/{entry.dtype})"
            )

    def verify(self) -> int:
        """Check every listed file (present, size, sha256, .npy shape and dtype); the count.

        ArtifactError names the first file that fails."""
        for name, entry in self.files.items():
            path = self.folder / name
            if not path.is_file():
                hint = (
                    " (the empty file that keeps the Python stub from writing bytecode here: "
                    "copy model repositories without excluding __pycache__)"
                    if name == contract.PYCACHE_BLOCKER
                    else ""
                )
                raise ArtifactError(f"{path}: listed in {self.path} but missing{hint}")
            if (entry.size is not None and path.stat().st_size != entry.size) or sha256_file(
                path
            ) != entry.sha256:
                raise ArtifactError(
                    f"{path}: sha256 does not match {self.path} (corrupted or replaced)"
                )
            if entry.shape is not None and npy_header(path) != (entry.shape, entry.dtype):
                raise ArtifactError(f"{path}: shape/dtype differ from {self.path}")
        return len(self.files)


def _artifact_files(folder: Path) -> list[str]:
    """Every file below `folder` but its manifest and Python bytecode (a stub may write some
    after the build; the __pycache__ blocker file itself is an artifact)."""
    names = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if relative.as_posix() == contract.MANIFEST_FILE or "__pycache__" in relative.parent.parts:
            continue
        names.append(relative.as_posix())
    return names


def write_manifest(
    folder: Path, fields: Mapping[str, Any] | None = None, names: Iterable[str] | None = None
) -> Manifest:
    """Hash `names` (default: every file below `folder`) into folder/manifest.json."""
    folder = Path(folder)
    chosen = _artifact_files(folder) if names is None else list(names)
    manifest = Manifest(
        folder=folder,
        files={name: FileEntry.of(folder / name) for name in chosen},
        fields=MappingProxyType(dict(fields or {})),
    )
    manifest.path.write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n")
    return manifest


def _legacy_files(raw: Mapping[str, Any]) -> tuple[dict[str, FileEntry], str] | None:
    """The files of a manifest written before this format, and the key that held them."""
    arrays = raw.get("arrays")
    if isinstance(arrays, Mapping):  # sequence store, format /1 and /2
        # Loading never needed the sha256 there (only verifying did): an entry without one
        # still loads, and fails verification.
        files = {
            str(entry["file"]): FileEntry(
                str(entry.get("sha256", "")),
                None,
                tuple(int(n) for n in entry["shape"]),
                entry["dtype"],
            )
            for entry in arrays.values()
        }
        return files, "arrays"
    files = raw.get("files")
    if isinstance(files, Mapping) and all(isinstance(v, str) for v in files.values()):
        # PQ artifacts, format seminar-pq/1: name -> sha256
        return {str(name): FileEntry(str(digest), None) for name, digest in files.items()}, "files"
    return None


def read_manifest(folder: Path) -> Manifest:
    """folder/manifest.json in this format or an older one; ArtifactError names a missing or
    malformed manifest."""
    folder = Path(folder)
    path = folder / contract.MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"{path}: manifest not found")
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        if raw.get("schema") == SCHEMA:
            files = {str(k): FileEntry.from_json(v) for k, v in raw["files"].items()}
            kept = {k: v for k, v in raw.items() if k not in ("schema", "files")}
        elif (legacy := _legacy_files(raw)) is not None:
            files, key = legacy
            kept = {k: v for k, v in raw.items() if k != key}
        else:
            claimed = f"format {raw['format']!r}: " if "format" in raw else ""
            raise ValueError(f"{claimed}no 'files' of schema {SCHEMA} and no older layout")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"{path}: not a valid manifest ({exc})") from exc
    return Manifest(folder, MappingProxyType(files), MappingProxyType(kept))


def verify_manifest(folder: Path) -> Manifest:
    """Read folder/manifest.json and check every file it lists (ArtifactError names the first
    that fails)."""
    manifest = read_manifest(folder)
    manifest.verify()
    return manifest
