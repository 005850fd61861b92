"""SYNTHETIC lifelong users appended to a real prepared dataset, for serving at L = 1k / 10k.

MovieLens histories stop at a few thousand events; serving must be measured and checked at
lifelong lengths. `append_synthetic_users` writes a new prepared-dataset directory = the real
one (files linked, not copied) plus users whose events are seeded random draws of the real
catalog and queries. They are labelled synthetic in meta.json (`synthetic_users`), get ids above
every real id (so id order and the real users' indices are unchanged), and are never evaluated
(test/valid position -1).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seminar.contract import FIRST_ITEM_INDEX
from seminar.pq.synthetic import synthetic_users

ARRAYS = "arrays"
# Arrays with one row per user or per event: rewritten; everything else is linked.
_PER_USER = ("user_ids", "test_pos", "valid_pos", "test_negatives", "valid_negatives")
_PER_EVENT = ("seq_item", "seq_query", "seq_label", "seq_time")


@dataclass(frozen=True)
class LongUsers:
    """What was appended: external ids and event counts, in order."""

    user_ids: tuple[int, ...]
    lengths: tuple[int, ...]
    seed: int


def append_synthetic_users(
    data_dir: Path,
    out_dir: Path,
    lengths: Sequence[int] = (1_000, 10_000),
    seed: int = 0,
    search_share: float = 0.3,
) -> LongUsers:
    """Write `out_dir` = `data_dir` + one SYNTHETIC user per entry of `lengths`."""
    if not lengths or min(lengths) < 1:
        raise ValueError(f"lengths: need at least one positive length, got {list(lengths)}")
    if not 0.0 <= search_share <= 1.0:
        raise ValueError(f"search_share: must be in [0, 1], got {search_share}")
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir)
    src = data_dir / ARRAYS
    if not (data_dir / "meta.json").is_file():
        raise ValueError(f"data_dir: {data_dir} is not a prepared dataset (no meta.json)")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / ARRAYS).mkdir(parents=True)
    for path in data_dir.iterdir():
        if path.is_file() and path.name != "meta.json":
            os.symlink(path, out_dir / path.name)
    rewritten = {*_PER_USER, *_PER_EVENT, "seq_offsets"}
    for path in src.iterdir():
        if path.stem not in rewritten:
            os.symlink(path, out_dir / ARRAYS / path.name)

    def load(name: str) -> np.ndarray:
        return np.load(src / f"{name}.npy")

    user_ids, offsets = load("user_ids"), load("seq_offsets")
    n_items = len(load("item_ids"))
    n_queries = len(json.loads((src / "queries.json").read_text()))
    new_ids = np.arange(1, len(lengths) + 1, dtype=np.int64) + int(user_ids.max())
    # Events are the PQ benchmarks' synthetic users, over this dataset's real item indices.
    new_offsets, item, query = synthetic_users(
        list(lengths),
        n_items=FIRST_ITEM_INDEX + n_items,
        n_queries=n_queries,
        seed=seed,
        search_share=search_share,
        first_item=FIRST_ITEM_INDEX,
    )
    n_new = len(item)
    label = (np.random.default_rng((seed, 1)).random(n_new) < 0.5).astype(np.int8)
    seq_time = load("seq_time")
    start = int(seq_time.max()) + 1
    time = np.concatenate([start + np.arange(n, dtype=np.int64) * 60 for n in lengths])
    new = {
        "user_ids": new_ids,
        "seq_offsets": offsets[-1] + new_offsets[1:],
        "seq_item": item,
        "seq_query": query,
        "seq_label": label,
        "seq_time": time,
        "test_pos": np.full(len(lengths), -1, dtype=np.int64),
        "valid_pos": np.full(len(lengths), -1, dtype=np.int64),
    }
    for name in ("test_negatives", "valid_negatives"):
        old = load(name)
        new[name] = np.zeros((len(lengths), *old.shape[1:]), dtype=old.dtype)
    for name, rows in new.items():
        old = load(name)
        np.save(out_dir / ARRAYS / f"{name}.npy", np.concatenate([old, rows.astype(old.dtype)]))

    meta = json.loads((data_dir / "meta.json").read_text())
    appended = LongUsers(tuple(int(u) for u in new_ids), tuple(int(n) for n in lengths), seed)
    meta["name"] = f"{meta.get('name', data_dir.name)}+synthetic-long-users"
    meta["checksum"] = (
        f"{meta.get('checksum', '')}+synthetic-long-users-{seed}-{'-'.join(map(str, lengths))}"
    )
    meta["synthetic_users"] = {
        "note": "SYNTHETIC users appended for serving benchmarks/tests: random real items/queries",
        "user_ids": list(appended.user_ids),
        "lengths": list(appended.lengths),
        "seed": seed,
        "source": str(data_dir),
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return appended
