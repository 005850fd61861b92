"""Per-version artifacts besides the graphs: features maps, real parity inputs, manifests.

- features: the id -> index maps and the token vocabulary, copied from the prepared dataset
  (docs/design.md section 1) so each version carries the maps it was trained with.
- manifest.json in every composing version dir: per file sha256, size, and shape/dtype for
  .npy files, so a server or a test can prove the artifacts are the ones built.
- real MovieLens inputs for the ONNX parity gate, made with the model's own encoders and
  component tables.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seminar import contract
from seminar.errors import ArtifactError, DataError


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _npy_meta(path: Path) -> dict:
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    return {"shape": list(array.shape), "dtype": str(array.dtype)}


def write_manifest(version_dir: Path) -> dict:
    """Write version_dir/manifest.json over every other file below version_dir."""
    files = {}
    for path in sorted(p for p in version_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(version_dir).as_posix()
        # Bytecode a stub wrote is not an artifact (the __pycache__ blocker file is one).
        if (
            rel == contract.MANIFEST_FILE
            or "__pycache__" in path.relative_to(version_dir).parent.parts
        ):
            continue
        entry = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        if path.suffix == ".npy":
            entry.update(_npy_meta(path))
        files[rel] = entry
    manifest = {"schema": 1, "files": files}
    (version_dir / contract.MANIFEST_FILE).write_text(
        json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    )
    return manifest


def verify_manifest(version_dir: Path) -> int:
    """Check every file of version_dir/manifest.json; return how many were verified."""
    path = version_dir / contract.MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"{path}: missing or unreadable manifest ({exc})") from exc
    for rel, entry in files.items():
        file = version_dir / rel
        if not file.is_file():
            hint = (
                " (the empty file that keeps the Python stub from writing bytecode here: copy "
                "model repositories without excluding __pycache__)"
                if rel == contract.PYCACHE_BLOCKER
                else ""
            )
            raise ArtifactError(f"{file}: listed in {path.name} but missing{hint}")
        if file.stat().st_size != entry["bytes"] or sha256_file(file) != entry["sha256"]:
            raise ArtifactError(
                f"{file}: sha256 does not match {path.name} (corrupted or replaced)"
            )
        if "shape" in entry and _npy_meta(file) != {
            "shape": entry["shape"],
            "dtype": entry["dtype"],
        }:
            raise ArtifactError(f"{file}: shape/dtype differ from {path.name}")
    return len(files)


def _arrays(data_dir: Path, name: str) -> Path:
    path = data_dir / "arrays" / name
    if not path.is_file():
        raise DataError(f"{path}: missing from the prepared dataset (seminar data prepare)")
    return path


def write_features(data_dir: Path, out_dir: Path, dims: contract.PipelineDims) -> None:
    """The features model's maps: user_ids.npy, item_ids.npy, tokens.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (contract.USER_IDS_FILE, contract.ITEM_IDS_FILE, contract.TOKENS_FILE):
        shutil.copyfile(_arrays(data_dir, name), out_dir / name)
    for name in (contract.USER_IDS_FILE, contract.ITEM_IDS_FILE):
        ids = np.load(out_dir / name, allow_pickle=False)
        if (
            ids.dtype != np.int64
            or ids.ndim != 1
            or (ids.size > 1 and not (np.diff(ids) > 0).all())
        ):
            raise DataError(f"{data_dir / 'arrays' / name}: must be sorted unique int64 ids")
    query_tokens = np.load(_arrays(data_dir, "query_tokens.npy"), mmap_mode="r")
    if query_tokens.shape[1] != dims.t:
        raise DataError(
            f"{data_dir / 'arrays/query_tokens.npy'}: T = {query_tokens.shape[1]} but the model "
            f"was built for T = {dims.t}"
        )


def real_parity_inputs(
    model: nn.Module, data_dir: Path, dims: contract.PipelineDims, rows: int = 64
) -> dict[str, dict[str, np.ndarray]]:
    """One batch of real MovieLens inputs per exported model, keyed by tensor name.

    query_tokens: real queries (row 0 = no query); item_index: real items; the head gets the
    encoders' outputs and, per user, real history events as pair embeddings from
    model.component_tables(), head h taking events [h*K, (h+1)*K) from the most recent back
    (short histories leave masked slots).
    """
    query_tokens = np.load(_arrays(data_dir, "query_tokens.npy"), mmap_mode="r")
    item_ids = np.load(_arrays(data_dir, contract.ITEM_IDS_FILE), mmap_mode="r")
    offsets = np.load(_arrays(data_dir, "seq_offsets.npy"), mmap_mode="r")
    seq_item = np.load(_arrays(data_dir, "seq_item.npy"), mmap_mode="r")
    seq_query = np.load(_arrays(data_dir, "seq_query.npy"), mmap_mode="r")

    rng = np.random.default_rng(0)
    q_rows = np.concatenate([[0], rng.integers(0, len(query_tokens), rows - 1)])
    tokens = np.asarray(query_tokens[q_rows], dtype=np.int64)  # (B, T)
    items = rng.integers(2, len(item_ids) + 2, size=(rows, 1)).astype(np.int64)  # (B, 1)
    users = rng.integers(0, len(offsets) - 1, rows)

    with torch.no_grad():
        query_emb = model.query_encoder(torch.from_numpy(tokens)).float()  # (B, D)
        item_emb = model.item_encoder(torch.from_numpy(items[:, 0])).float()  # (B, D)
        tables = model.component_tables()
        topk_emb = torch.zeros(rows, dims.h, dims.k, dims.d)
        topk_mask = torch.zeros(rows, dims.h, dims.k)
        for b, u in enumerate(users):
            lo, hi = int(offsets[u]), int(offsets[u + 1])
            recent = np.arange(hi - 1, lo - 1, -1)[: dims.h * dims.k]  # newest first
            if recent.size == 0:
                continue
            it = torch.from_numpy(np.asarray(seq_item[recent], dtype=np.int64))
            qu = torch.from_numpy(np.asarray(seq_query[recent], dtype=np.int64))
            x = tables["query"][qu] + sum(t[it] for m, t in tables.items() if m != "query")
            n = recent.size
            flat = torch.zeros(dims.h * dims.k, dims.d)
            flat[:n] = x
            topk_emb[b] = flat.reshape(dims.h, dims.k, dims.d)  # (H*K, D) -> (H, K, D)
            topk_mask[b].view(-1)[:n] = 1.0
    return {
        contract.QUERY_ENCODER_MODEL: {contract.QUERY_TOKENS: tokens},
        contract.ITEM_ENCODER_MODEL: {contract.ITEM_INDEX: items},
        contract.RANKING_HEAD_MODEL: {
            contract.QUERY_EMB: query_emb.numpy(),
            contract.ITEM_EMB: item_emb.numpy(),
            contract.TOPK_EMB: topk_emb.numpy(),
            contract.TOPK_MASK: topk_mask.numpy(),
        },
    }


def index_bounds(data_dir: Path) -> Mapping[str, int]:
    """Exclusive upper bounds of the int64 graph inputs, for random parity inputs."""
    tokens = json.loads(_arrays(data_dir, contract.TOKENS_FILE).read_text())
    items = np.load(_arrays(data_dir, contract.ITEM_IDS_FILE), mmap_mode="r")
    return {contract.QUERY_TOKENS: len(tokens), contract.ITEM_INDEX: len(items) + 2}


def write_index_ranges(
    version_dir: Path, spec: contract.ModelSpec, bounds: Mapping[str, int]
) -> Path:
    """index_ranges.json of an exported graph: [0, bound) per index input it takes.

    The bounds are the ones its parity gate passed with (index_bounds: the rows of the token
    and item tables). Per version, not in the shared config.pbtxt: a later build on a larger
    catalog has larger tables, and an older version must keep its own ranges.
    """
    ranges = {t.name: [0, int(bounds[t.name])] for t in spec.inputs if t.name in bounds}
    path = version_dir / contract.INDEX_RANGES_FILE
    path.write_text(json.dumps(ranges, indent=2, sort_keys=True) + "\n")
    return path


def read_index_ranges(path: Path) -> dict[str, tuple[int, int]]:
    """{input name: (low, high)} from an index_ranges.json; ArtifactError names a bad file."""
    try:
        raw = json.loads(path.read_text())
        ranges = {str(k): (int(v[0]), int(v[1])) for k, v in raw.items() if len(v) == 2}
        if len(ranges) != len(raw) or any(lo >= hi for lo, hi in ranges.values()):
            raise ValueError("every entry must be [low, high] with low < high")
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"{path}: not a valid index ranges file ({exc})") from exc
    return ranges
