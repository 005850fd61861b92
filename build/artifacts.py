"""Per-version artifacts besides the graphs: features maps, real parity inputs, index ranges.

- features: the id -> index maps and the token vocabulary, copied from the prepared dataset
  (docs/design.md section 1) so each version carries the maps it was trained with.
- real MovieLens inputs for the ONNX parity gate, made with the model's own encoders and
  component tables.
- index_ranges.json of each exported graph, which its Triton backend reads at load.

torch is imported only where a model runs: the backends read index ranges with numpy alone.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from seminar import contract
from seminar.errors import ArtifactError, DataError

if TYPE_CHECKING:
    from torch import nn


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
    import torch

    query_tokens = np.load(_arrays(data_dir, "query_tokens.npy"), mmap_mode="r")
    item_ids = np.load(_arrays(data_dir, contract.ITEM_IDS_FILE), mmap_mode="r")
    offsets = np.load(_arrays(data_dir, "seq_offsets.npy"), mmap_mode="r")
    seq_item = np.load(_arrays(data_dir, "seq_item.npy"), mmap_mode="r")
    seq_query = np.load(_arrays(data_dir, "seq_query.npy"), mmap_mode="r")

    rng = np.random.default_rng(0)
    q_rows = np.concatenate([[0], rng.integers(0, len(query_tokens), rows - 1)])
    tokens = np.asarray(query_tokens[q_rows], dtype=np.int64)  # (B, T)
    first = contract.FIRST_ITEM_INDEX
    items = rng.integers(first, len(item_ids) + first, size=(rows, 1)).astype(np.int64)  # (B, 1)
    users = rng.integers(0, len(offsets) - 1, rows)

    with torch.no_grad():
        # The head sees what the query encoder gives for these queries, text part included.
        query_emb = model.encode_queries(torch.from_numpy(q_rows.astype(np.int64))).float()
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
        contract.QUERY_ENCODER_MODEL: {
            contract.QUERY_TOKENS: tokens,
            # the real queries' MiniLM rows (zeros for row 0, no query; and where the model
            # was trained without text)
            contract.QUERY_TEXT_EMB: model.query_text_rows(
                torch.from_numpy(q_rows.astype(np.int64))
            )
            .float()
            .numpy(),
        },
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
    return {
        contract.QUERY_TOKENS: len(tokens),
        contract.ITEM_INDEX: len(items) + contract.FIRST_ITEM_INDEX,
    }


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


def copy_backend(source: str, version_dir: Path) -> None:
    src = contract.backend_source_path(source)
    if not src.is_file():
        raise ArtifactError(f"{src}: backend source missing (serving/backends/ holds them)")
    shutil.copyfile(src, version_dir / contract.PYTHON_FILE)
    (version_dir / contract.PYCACHE_BLOCKER).touch()  # no bytecode from the stub in the version dir
