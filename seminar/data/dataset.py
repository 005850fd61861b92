"""Read a prepared dataset directory (docs/design.md section 1) with memory-mapped arrays.

    ds = PreparedDataset.load("data/movielens")
    u = ds.user_index(1)                        # external userId -> dense user index
    h = ds.history(u, before=ds.test_pos[u])    # every event strictly before the test target
    h.item, h.query, h.label, h.time            # (L,) views into the memory-mapped arrays

Indices: users 0..U-1 (ascending external id); items 0 = PAD, 1 = OOV, 2..I+1 (ascending
external id); queries 0 = no query, 1..Q-1; events 0..N-1 (by user, time, source order).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from seminar.contract import EVENT_LOG_FIELD, FIRST_ITEM_INDEX, OOV_ITEM_INDEX
from seminar.data.prepare import ARRAYS, META_FILE
from seminar.data.schema import SCHEMA_VERSION, read_events, read_items
from seminar.data.tokenizer import QueryTokenizer
from seminar.errors import DataError
from seminar.events.log import Watermark


@dataclass(frozen=True)
class History:
    """Events `[start, stop)` of one user, time-ordered; arrays are (L,) views."""

    start: int  # absolute event index of the first event
    item: np.ndarray  # int32 item index
    query: np.ndarray  # int32 query index (0 = rec event)
    label: np.ndarray  # int8
    time: np.ndarray  # int64 unix seconds

    def __len__(self) -> int:
        return len(self.item)


@dataclass(frozen=True)
class PreparedDataset:
    path: Path
    meta: dict[str, Any]
    user_ids: np.ndarray  # (U,) int64 external id of user index u
    item_ids: np.ndarray  # (I,) int64 external id of item index i + 2
    seq_offsets: np.ndarray  # (U+1,) int64
    seq_item: np.ndarray  # (N,) int32
    seq_query: np.ndarray  # (N,) int32
    seq_label: np.ndarray  # (N,) int8
    seq_time: np.ndarray  # (N,) int64
    queries: list[str]  # (Q,) query text per query index, queries[0] == ""
    tokens: list[str]  # query vocabulary (0 = <pad>, 1 = <unk>)
    query_tokens: np.ndarray  # (Q, T) int32
    attributes: list[str]  # attribute vocabulary (0 = <pad>)
    item_attrs: np.ndarray  # (I+2, A) int32
    item_text_emb: np.ndarray | None  # (I+2, 384) float32; None only for feature-less benches
    query_text_emb: np.ndarray | None  # (Q, 384) float32
    item_image_emb: np.ndarray | None  # (I+2, E) float32; None = no image modality
    test_pos: np.ndarray  # (U,) int64 absolute event index, -1 = not evaluated
    valid_pos: np.ndarray  # (U,) int64
    test_negatives: np.ndarray  # (U, 99) int32 item indices
    valid_negatives: np.ndarray  # (U, 99) int32
    _user_index: dict[int, int] = field(repr=False, compare=False)
    _item_index: dict[int, int] = field(repr=False, compare=False)

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = True) -> PreparedDataset:
        """Open `path`; arrays are memory-mapped (read-only) unless mmap=False."""
        path = Path(path)
        meta_path = path / META_FILE
        if not meta_path.is_file():
            raise DataError(f"{meta_path}: not found; {path} is not a prepared dataset.")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise DataError(
                f"{meta_path}: field 'schema_version' is {meta.get('schema_version')!r}, "
                f"this code reads {SCHEMA_VERSION}; prepare the dataset again."
            )
        arrays = path / ARRAYS
        mode = "r" if mmap else None

        def array(name: str, optional: bool = False) -> np.ndarray | None:
            file = arrays / f"{name}.npy"
            if not file.is_file():
                if optional:
                    return None
                raise DataError(f"{file}: missing from the prepared dataset.")
            try:
                return np.load(file, mmap_mode=mode)
            except (ValueError, OSError) as err:
                raise DataError(f"{file}: not a readable .npy array ({err}).") from None

        def listing(name: str) -> list[str]:
            file = arrays / f"{name}.json"
            if not file.is_file():
                raise DataError(f"{file}: missing from the prepared dataset.")
            return json.loads(file.read_text(encoding="utf-8"))

        user_ids = array("user_ids")
        item_ids = array("item_ids")
        ds = cls(
            path=path,
            meta=meta,
            user_ids=user_ids,
            item_ids=item_ids,
            seq_offsets=array("seq_offsets"),
            seq_item=array("seq_item"),
            seq_query=array("seq_query"),
            seq_label=array("seq_label"),
            seq_time=array("seq_time"),
            queries=listing("queries"),
            tokens=listing("tokens"),
            query_tokens=array("query_tokens"),
            attributes=listing("attributes"),
            item_attrs=array("item_attrs"),
            item_text_emb=array("item_text_emb", optional=True),
            query_text_emb=array("query_text_emb", optional=True),
            item_image_emb=array("item_image_emb", optional=True),
            test_pos=array("test_pos"),
            valid_pos=array("valid_pos"),
            test_negatives=array("test_negatives"),
            valid_negatives=array("valid_negatives"),
            _user_index={int(x): i for i, x in enumerate(user_ids)},
            _item_index={int(x): i + FIRST_ITEM_INDEX for i, x in enumerate(item_ids)},
        )
        ds._check()
        return ds

    def _check(self) -> None:
        """Shapes agree with each other (a truncated or mixed directory fails here)."""
        n_users, n_items, n_events = len(self.user_ids), len(self.item_ids), len(self.seq_item)
        expect = {
            "seq_offsets": (self.seq_offsets.shape, (n_users + 1,)),
            "seq_query": (self.seq_query.shape, (n_events,)),
            "seq_label": (self.seq_label.shape, (n_events,)),
            "seq_time": (self.seq_time.shape, (n_events,)),
            "item_attrs": (self.item_attrs.shape[:1], (n_items + FIRST_ITEM_INDEX,)),
            "query_tokens": (self.query_tokens.shape[:1], (len(self.queries),)),
            "test_pos": (self.test_pos.shape, (n_users,)),
            "valid_pos": (self.valid_pos.shape, (n_users,)),
            "test_negatives": (self.test_negatives.shape[:1], (n_users,)),
            "valid_negatives": (self.valid_negatives.shape[:1], (n_users,)),
        }
        if self.item_text_emb is not None:
            expect["item_text_emb"] = (self.item_text_emb.shape[:1], (n_items + FIRST_ITEM_INDEX,))
        if self.query_text_emb is not None:
            expect["query_text_emb"] = (self.query_text_emb.shape[:1], (len(self.queries),))
        if self.item_image_emb is not None:
            expect["item_image_emb"] = (
                self.item_image_emb.shape[:1],
                (n_items + FIRST_ITEM_INDEX,),
            )
        for name, (got, want) in expect.items():
            if tuple(got) != want:
                raise DataError(f"{self.path / ARRAYS / name}.npy: shape {got}, expected {want}.")
        if int(self.seq_offsets[-1]) != n_events:
            raise DataError(f"{self.path / ARRAYS}/seq_offsets.npy: last offset != event count.")

    # Sizes.

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        """I: catalog items (item indices 2..I+1)."""
        return len(self.item_ids)

    @property
    def n_item_rows(self) -> int:
        """I + 2: rows of every per-item table (PAD and OOV included)."""
        return len(self.item_ids) + FIRST_ITEM_INDEX

    @property
    def n_queries(self) -> int:
        """Q: query indices, the empty query 0 included."""
        return len(self.queries)

    @property
    def n_events(self) -> int:
        return len(self.seq_item)

    @property
    def synthetic(self) -> bool:
        return bool(self.meta.get("synthetic"))

    @property
    def checksum(self) -> str:
        return str(self.meta["checksum"])

    # Id <-> index.

    def user_index(self, user_id: int) -> int:
        """Dense index of an external user id (KeyError if the user has no events)."""
        return self._user_index[int(user_id)]

    def item_index(self, item_id: int) -> int:
        """Item index of an external item id; unknown ids map to OOV (1)."""
        return self._item_index.get(int(item_id), OOV_ITEM_INDEX)

    def item_id(self, item_index: int) -> int:
        """External id of an item index >= 2."""
        if item_index < FIRST_ITEM_INDEX:
            raise KeyError(f"item index {item_index} is PAD/OOV, it has no external id")
        return int(self.item_ids[item_index - FIRST_ITEM_INDEX])

    # Sequences.

    def user_span(self, u: int) -> tuple[int, int]:
        """Absolute event range `[start, stop)` of user `u`."""
        return int(self.seq_offsets[u]), int(self.seq_offsets[u + 1])

    def history(self, u: int, before: int | None = None) -> History:
        """User `u`'s events with absolute index < `before` (all of them when None)."""
        start, stop = self.user_span(u)
        if before is not None:
            if not start <= before <= stop:
                raise IndexError(f"event {before} is outside user {u}'s events [{start}, {stop})")
            stop = before
        return History(
            start=start,
            item=self.seq_item[start:stop],
            query=self.seq_query[start:stop],
            label=self.seq_label[start:stop],
            time=self.seq_time[start:stop],
        )

    @cached_property
    def event_user(self) -> np.ndarray:
        """(N,) int64 user index of every event."""
        return np.repeat(np.arange(self.n_users), np.diff(self.seq_offsets))

    def train_positions(self) -> np.ndarray:
        """(M,) absolute indices of training targets: positives before the user's valid target.

        Users that are not evaluated contribute all their positives.
        """
        limit = np.where(self.valid_pos >= 0, self.valid_pos, np.iinfo(np.int64).max)
        event_index = np.arange(self.n_events)
        keep = (np.asarray(self.seq_label) == 1) & (event_index < limit[self.event_user])
        return np.flatnonzero(keep)

    def evaluated_users(self) -> np.ndarray:
        """(U_eval,) user indices with test and validation targets."""
        return np.flatnonzero(np.asarray(self.test_pos) >= 0)

    # Side files.

    def tokenizer(self) -> QueryTokenizer:
        return QueryTokenizer.load(self.path / ARRAYS / "tokens.json", self.query_tokens.shape[1])

    def events_table(self) -> pa.Table:
        return read_events(self.path / "events.parquet")

    def items_table(self) -> pa.Table:
        return read_items(self.path / "items.parquet")

    @property
    def event_log_mark(self) -> Watermark:
        """The online event log position this dataset holds the logged events up to
        (`seminar data append` records it); Watermark() (W 0) when no append made it."""
        try:
            return Watermark.from_json(self.meta.get(EVENT_LOG_FIELD))
        except DataError as err:
            raise DataError(f"{self.path / META_FILE}: field '{EVENT_LOG_FIELD}': {err}") from None

    @property
    def planted(self) -> dict[str, Any] | None:
        """Synthetic datasets: the planted truth (see seminar.data.synthetic)."""
        return self.meta.get("planted")
