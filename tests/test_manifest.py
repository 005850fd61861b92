"""seminar.manifest: the one manifest format of every artifact folder (model versions, PQ
artifacts, sequence stores), its verification, and the older PQ formats it still reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seminar import contract, manifest
from seminar.errors import ArtifactError


def _folder(root: Path) -> Path:
    np.save(root / "a.npy", np.arange(10, dtype=np.int64))
    (root / "sub").mkdir()
    (root / "sub" / "b.json").write_text('["x"]')
    return root


def test_round_trip_records_size_hash_and_npy_header(tmp_path: Path) -> None:
    written = manifest.write_manifest(_folder(tmp_path), fields={"format": "test/1", "k": 8})
    read = manifest.read_manifest(tmp_path)
    assert read == written
    assert read.fields == {"format": "test/1", "k": 8}
    a = read.files["a.npy"]
    assert (a.shape, a.dtype, a.size) == ((10,), "int64", (tmp_path / "a.npy").stat().st_size)
    assert a.sha256 == manifest.sha256_file(tmp_path / "a.npy")
    assert read.files["sub/b.json"].shape is None
    assert manifest.verify_manifest(tmp_path).verify() == 2
    raw = json.loads((tmp_path / contract.MANIFEST_FILE).read_text())
    assert raw["schema"] == manifest.SCHEMA and raw["files"]["a.npy"]["shape"] == [10]


def test_only_the_named_files_are_listed(tmp_path: Path) -> None:
    written = manifest.write_manifest(_folder(tmp_path), names=["a.npy"])
    assert list(written.files) == ["a.npy"]


def test_corruption_and_missing_files_are_named(tmp_path: Path) -> None:
    manifest.write_manifest(_folder(tmp_path))
    (tmp_path / "sub" / "b.json").write_text('["y"]')  # same size, other bytes
    with pytest.raises(ArtifactError, match=r"sub/b\.json: sha256 does not match"):
        manifest.verify_manifest(tmp_path)
    (tmp_path / "sub" / "b.json").unlink()
    with pytest.raises(ArtifactError, match=r"sub/b\.json: listed in .*manifest\.json but missing"):
        manifest.verify_manifest(tmp_path)


def test_a_missing_or_malformed_manifest_is_named(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"manifest\.json: manifest not found"):
        manifest.read_manifest(tmp_path)
    (tmp_path / contract.MANIFEST_FILE).write_text('{"alpha": 0.5}')
    with pytest.raises(ArtifactError, match=r"manifest\.json: not a valid manifest"):
        manifest.read_manifest(tmp_path)


def test_an_array_that_disagrees_with_its_entry_is_named(tmp_path: Path) -> None:
    written = manifest.write_manifest(_folder(tmp_path))
    written.check_array("a.npy", np.load(tmp_path / "a.npy"))
    with pytest.raises(ArtifactError, match=r"a\.npy: shape/dtype"):
        written.check_array("a.npy", np.arange(10, dtype=np.int32))
    with pytest.raises(ArtifactError, match=r"lists no file 'c\.npy'"):
        written.entry("c.npy")


def test_the_pycache_blocker_is_listed_but_no_bytecode(tmp_path: Path) -> None:
    (tmp_path / contract.PYTHON_FILE).write_text("x = 1\n")
    (tmp_path / contract.PYCACHE_BLOCKER).touch()
    stray = tmp_path / "pq" / "__pycache__"
    stray.mkdir(parents=True)
    (stray / "model.cpython-311.pyc").write_bytes(b"bytecode")
    files = manifest.write_manifest(tmp_path).files
    assert sorted(files) == [contract.PYCACHE_BLOCKER, contract.PYTHON_FILE]
    (tmp_path / contract.PYCACHE_BLOCKER).unlink()
    with pytest.raises(ArtifactError, match="without excluding __pycache__"):
        manifest.verify_manifest(tmp_path)


def test_a_pq_artifact_manifest_of_format_1_still_reads(tmp_path: Path) -> None:
    """seminar-pq/1 listed name -> sha256 and no sizes."""
    (tmp_path / "tables.safetensors").write_bytes(b"tables")
    digest = manifest.sha256_file(tmp_path / "tables.safetensors")
    old = {"format": "seminar-pq/1", "alpha": 0.5, "files": {"tables.safetensors": digest}}
    (tmp_path / contract.MANIFEST_FILE).write_text(json.dumps(old))
    read = manifest.read_manifest(tmp_path)
    assert read.fields == {"format": "seminar-pq/1", "alpha": 0.5}
    assert read.files["tables.safetensors"] == manifest.FileEntry(digest, None)
    assert read.verify() == 1
    (tmp_path / "tables.safetensors").write_bytes(b"tablez")
    with pytest.raises(ArtifactError, match=r"tables\.safetensors: sha256"):
        read.verify()


def test_a_store_manifest_of_format_1_and_2_still_reads(tmp_path: Path) -> None:
    """seminar-pq-store/1 and /2 listed `arrays` by name with file, shape, dtype, sha256."""
    codes = np.zeros((4, 3), np.uint8)
    np.save(tmp_path / "codes.npy", codes)
    entry = {
        "file": "codes.npy",
        "shape": [4, 3],
        "dtype": "uint8",
        "sha256": manifest.sha256_file(tmp_path / "codes.npy"),
    }
    for fmt in ("seminar-pq-store/1", "seminar-pq-store/2"):
        old = {"format": fmt, "nbits": 8, "arrays": {"codes": entry}}
        (tmp_path / contract.MANIFEST_FILE).write_text(json.dumps(old))
        read = manifest.read_manifest(tmp_path)
        assert read.fields == {"format": fmt, "nbits": 8}
        assert read.files["codes.npy"].shape == (4, 3)
        assert read.verify() == 1
        read.check_array("codes.npy", codes)


def test_verifying_imports_no_torch(tmp_path: Path) -> None:
    """The `features` Triton model verifies its version with numpy alone."""
    manifest.write_manifest(_folder(tmp_path))
    code = (
        "import sys; from pathlib import Path; from seminar import manifest; "
        f"manifest.verify_manifest(Path({str(tmp_path)!r})); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
