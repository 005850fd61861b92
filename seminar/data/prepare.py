"""The one pipeline every source goes through: canonical tables -> prepared dataset directory.

Layout and meaning of every file: docs/design.md section 1. Sources (MovieLens, a user's own
Parquet logs, the synthetic generator) only turn their input into canonical event chunks; this
module maps ids to dense indices, writes the sequence arrays, the splits, the vocabularies and the
frozen text features, and makes the whole directory appear at once:

    with atomic_output(out) as tmp:          # builds in <out>.tmp-*, renamed on success
        writer = DatasetWriter(tmp, catalog, queries, user_ids, counts, config)
        for chunk in chunks:                  # whole users, ascending user id, time-ordered
            writer.write(chunk)
        stats = writer.finish()
        write_meta(tmp, ...)

Memory is bounded by one chunk (plus the (U,) split arrays): sequence arrays are appended to
.npy files whose length is known up front, events stream to Parquet row groups.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from seminar.contract import FIRST_ITEM_INDEX
from seminar.data import features
from seminar.data.images import PreprocessConfig
from seminar.data.schema import (
    EVENTS_SCHEMA,
    IMAGE_EMBEDDING,
    IMAGE_REF,
    SCHEMA_VERSION,
    EventType,
    image_embeddings,
)
from seminar.data.splits import SplitConfig, split_user
from seminar.data.tokenizer import QUERY_TOKENS, QueryTokenizer
from seminar.errors import ConflictError, DataError
from seminar.model.config import ImageTowerConfig

META_FILE = "meta.json"
ARRAYS = "arrays"
ATTR_PAD = "<pad>"
IMAGE_TOWER = "image_tower"  # the trained image tower, beside a dataset embedded from images


def note(config: PrepareConfig, message: str) -> None:
    """One progress line on stderr, so that stdout stays the statistics (`--json`)."""
    if config.progress:
        print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class PrepareConfig:
    """Knobs shared by every source; defaults live here only."""

    seed: int = 0  # negatives sampling (and the synthetic generator)
    negatives: int = 99  # sampled negatives per evaluated user and split
    min_positives: int = 3  # fewer positives -> the user is not evaluated
    chunk_rows: int = 1_000_000  # events per write chunk (bounds memory)
    text_features: bool = True  # MiniLM item/query embeddings (off only in throughput benches)
    # Progress on stderr: one line per step, and bars where stderr is a terminal (a bar written
    # to a log file is one unreadable line of carriage returns).
    progress: bool = True
    # A catalog with image files (image_ref, no image_embedding): how DALI preprocesses them
    # and how the CNN image tower that embeds them trains.
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    image_tower: ImageTowerConfig = field(default_factory=ImageTowerConfig)

    def __post_init__(self) -> None:
        if self.chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {self.chunk_rows}")
        SplitConfig(self.seed, self.negatives, self.min_positives)  # raises on a bad field now

    @property
    def split(self) -> SplitConfig:
        return SplitConfig(self.seed, self.negatives, self.min_positives)


@dataclass(frozen=True)
class Stats:
    """What `seminar data prepare ... --json` prints."""

    users: int
    items: int
    events: int
    search_events: int
    rec_events: int
    positives: int
    evaluated_users: int
    queries: int  # distinct non-empty query texts
    tokens: int  # query vocabulary, <pad> and <unk> included
    attributes: int  # attribute vocabulary, <pad> included
    history_p50: float  # events per user
    history_p90: float
    history_max: int
    image_dim: int  # 0 = no image modality

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Catalog:
    """A validated item table (schema.validate_items), sorted by item_id."""

    table: pa.Table
    item_ids: np.ndarray = field(repr=False)  # (I,) int64 ascending; item index = position + 2

    @classmethod
    def from_table(cls, items: pa.Table) -> Catalog:
        items = items.sort_by("item_id")
        return cls(items, items.column("item_id").to_numpy())

    def __len__(self) -> int:
        return len(self.item_ids)

    def index_of(self, item_ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
        """Item indices (from 2) of external ids; -1 where an id is not in the catalog."""
        found = pc.index_in(item_ids, value_set=pa.array(self.item_ids))
        return found.fill_null(-1 - FIRST_ITEM_INDEX).to_numpy().astype(np.int64) + FIRST_ITEM_INDEX


@contextmanager
def atomic_output(out: Path) -> Iterator[Path]:
    """Yield a fresh `<out>.tmp-*` directory; on success it replaces `out`, on failure it goes.

    An existing `out` is replaced only if it is empty or a prepared dataset (has meta.json).
    """
    out = Path(out)
    if out.exists():
        replaceable = out.is_dir() and ((out / META_FILE).is_file() or not any(out.iterdir()))
        if not replaceable:
            raise ConflictError(
                f"{out} exists and is not a prepared dataset; refusing to overwrite it."
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f"{out.name}.old-{uuid.uuid4().hex[:8]}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class _NpyAppender:
    """A 1-D .npy file of known length, filled by appending chunks (nothing held in memory)."""

    def __init__(self, path: Path, dtype: np.dtype | type, length: int) -> None:
        self.dtype = np.dtype(dtype)
        self.length = length
        self.written = 0
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in close()
        header = {"descr": self.dtype.str, "fortran_order": False, "shape": (length,)}
        np.lib.format.write_array_header_1_0(self._file, header)

    def append(self, values: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(values, dtype=self.dtype).tobytes())
        self.written += len(values)

    def close(self) -> None:
        self._file.close()
        if self.written != self.length:
            raise RuntimeError(f"wrote {self.written} of {self.length} values to {self._file.name}")


class DatasetWriter:
    """Writes one prepared dataset into `root` (docs/design.md section 1).

    queries: index -> text, with queries[0] == "" (rec events); user_ids: (U,) ascending;
    counts: (U,) events per user. `write` must then receive exactly those users' events, in
    order, each chunk holding whole users, each user's events time-ordered.
    """

    def __init__(
        self,
        root: Path,
        catalog: Catalog,
        queries: list[str],
        user_ids: np.ndarray,
        counts: np.ndarray,
        config: PrepareConfig,
        image_base: Path | None = None,
    ) -> None:
        """image_base: the folder relative image_ref paths start from (the items file's)."""
        if not queries or queries[0] != "":
            raise ValueError("queries[0] must be the empty query")
        self.root, self.catalog, self.queries, self.config = root, catalog, queries, config
        self.image_paths = _image_paths(catalog, image_base)  # checked before any event
        self.user_ids = np.asarray(user_ids, np.int64)
        self.counts = np.asarray(counts, np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)  # (U+1,)
        n_users, n_events = len(self.user_ids), int(self.offsets[-1])
        self.arrays = root / ARRAYS
        self.arrays.mkdir(parents=True)
        np.save(self.arrays / "user_ids.npy", self.user_ids)
        np.save(self.arrays / "item_ids.npy", catalog.item_ids.astype(np.int64))
        np.save(self.arrays / "seq_offsets.npy", self.offsets)
        self._seq = {
            "item": _NpyAppender(self.arrays / "seq_item.npy", np.int32, n_events),
            "query": _NpyAppender(self.arrays / "seq_query.npy", np.int32, n_events),
            "label": _NpyAppender(self.arrays / "seq_label.npy", np.int8, n_events),
            "time": _NpyAppender(self.arrays / "seq_time.npy", np.int64, n_events),
        }
        self._events = pq.ParquetWriter(root / "events.parquet", EVENTS_SCHEMA)
        self._query_values = pa.array(queries, pa.string())
        k = config.negatives
        self.test_pos = np.full(n_users, -1, np.int64)
        self.valid_pos = np.full(n_users, -1, np.int64)
        self.test_negatives = np.zeros((n_users, k), np.int32)
        self.valid_negatives = np.zeros((n_users, k), np.int32)
        self._next_user = 0
        self._search = 0
        self._positives = 0
        from tqdm.auto import tqdm

        note(
            config,
            f"events: {n_events:,} events of {n_users:,} users -> sequences, splits, "
            f"{config.negatives} sampled negatives per evaluated user",
        )
        # disable=None: a bar only on a terminal
        bar_off = None if config.progress else True
        self._bar = tqdm(total=n_events, desc="events", unit="ev", disable=bar_off)

    def write(self, events: pa.Table) -> None:
        """Append whole users (canonical schema), continuing where the last chunk ended."""
        u0 = self._next_user
        row0 = int(self.offsets[u0])
        u1 = int(np.searchsorted(self.offsets, row0 + events.num_rows))
        if u1 > len(self.user_ids) or self.offsets[u1] != row0 + events.num_rows:
            raise ValueError("a chunk must hold whole users, in order")
        expected = np.repeat(self.user_ids[u0:u1], self.counts[u0:u1])
        if not np.array_equal(events.column("user_id").to_numpy(), expected):
            raise ValueError("chunk users differ from the user_ids/counts given up front")
        items = self.catalog.index_of(events.column("item_id"))  # (n,)
        if (items < FIRST_ITEM_INDEX).any():
            raise ValueError("events reference item ids missing from the catalog")
        found = pc.index_in(events.column("query"), value_set=self._query_values)
        if found.null_count:
            raise ValueError("events hold queries missing from the query list")
        queries = found.to_numpy()
        labels = events.column("label").to_numpy()
        self._seq["item"].append(items)
        self._seq["query"].append(queries)
        self._seq["label"].append(labels)
        self._seq["time"].append(events.column("timestamp").to_numpy())
        self._events.write_table(events.cast(EVENTS_SCHEMA), row_group_size=256 * 1024)
        self._search += int(np.count_nonzero(queries))
        self._positives += int(np.count_nonzero(labels == 1))

        n_rows = len(self.catalog) + FIRST_ITEM_INDEX
        for u in range(u0, u1):
            lo, hi = int(self.offsets[u] - row0), int(self.offsets[u + 1] - row0)
            split = split_user(
                u, int(self.offsets[u]), labels[lo:hi], items[lo:hi], n_rows, self.config.split
            )
            self.test_pos[u], self.valid_pos[u] = split.test_pos, split.valid_pos
            self.test_negatives[u], self.valid_negatives[u] = (
                split.test_negatives,
                split.valid_negatives,
            )
        self._next_user = u1
        self._bar.update(events.num_rows)

    def finish(self) -> Stats:
        """Close the streams; write splits, vocabularies and frozen features."""
        self._bar.close()
        if self._next_user != len(self.user_ids):
            raise ValueError(f"only {self._next_user} of {len(self.user_ids)} users were written")
        self._events.close()
        for appender in self._seq.values():
            appender.close()
        for name in ("test_pos", "valid_pos", "test_negatives", "valid_negatives"):
            np.save(self.arrays / f"{name}.npy", getattr(self, name))

        (self.arrays / "queries.json").write_text(
            json.dumps(self.queries, ensure_ascii=False), encoding="utf-8"
        )
        tokenizer = QueryTokenizer.build(self.queries, QUERY_TOKENS)
        tokenizer.save(self.arrays / "tokens.json")
        np.save(
            self.arrays / "query_tokens.npy",
            np.array(tokenizer.encode_batch(self.queries), np.int32).reshape(-1, QUERY_TOKENS),
        )
        n_attributes = self._write_attributes()
        if self.config.text_features:
            self._write_text_features()
        if self.image_paths is not None:
            self._embed_images(n_attributes)
        pq.write_table(self.catalog.table, self.root / "items.parquet")
        image = image_embeddings(self.catalog.table)
        if image is not None:
            rows = np.zeros((len(self.catalog) + FIRST_ITEM_INDEX, image.shape[1]), np.float32)
            rows[FIRST_ITEM_INDEX:] = image  # (I+2, E), PAD and OOV rows zero
            np.save(self.arrays / "item_image_emb.npy", rows)

        n_events = int(self.offsets[-1])
        return Stats(
            users=len(self.user_ids),
            items=len(self.catalog),
            events=n_events,
            search_events=self._search,
            rec_events=n_events - self._search,
            positives=self._positives,
            evaluated_users=int(np.count_nonzero(self.test_pos >= 0)),
            queries=len(self.queries) - 1,
            tokens=len(tokenizer),
            attributes=n_attributes,
            history_p50=round(float(np.percentile(self.counts, 50)), 2),
            history_p90=round(float(np.percentile(self.counts, 90)), 2),
            history_max=int(self.counts.max()),
            image_dim=0 if image is None else int(image.shape[1]),
        )

    def _write_attributes(self) -> int:
        per_item = self.catalog.table.column("attributes").to_pylist()
        vocab = [ATTR_PAD, *sorted({a for attrs in per_item for a in attrs})]
        index = {a: i for i, a in enumerate(vocab)}
        width = max(1, max(len(set(attrs)) for attrs in per_item))
        table = np.zeros((len(per_item) + FIRST_ITEM_INDEX, width), np.int32)  # (I+2, A)
        for row, attrs in enumerate(per_item, start=FIRST_ITEM_INDEX):
            ids = list(dict.fromkeys(index[a] for a in attrs))  # dedupe, keep order
            table[row, : len(ids)] = ids
        (self.arrays / "attributes.json").write_text(
            json.dumps(vocab, ensure_ascii=False), encoding="utf-8"
        )
        np.save(self.arrays / "item_attrs.npy", table)
        return len(vocab)

    def _embed_images(self, n_attributes: int) -> None:
        """DALI-preprocess the catalog's images, train the image tower on them (aligned with
        the text and attributes just written), save it under IMAGE_TOWER and add its vectors
        as the image_embedding column (zeros for items without an image)."""
        from seminar.data.dali import dali_preprocess
        from seminar.model.image_tower import embed_images, save_tower, train_image_tower

        paths = self.image_paths or []
        has = np.array([path is not None for path in paths])
        if has.sum() < 2:
            raise DataError(
                f"column '{IMAGE_REF}' names {int(has.sum())} image(s); the image tower needs at "
                "least 2 (or give precomputed vectors in 'image_embedding')."
            )
        rows = np.flatnonzero(has)
        note(self.config, f"images: {rows.size:,} files -> DALI -> CNN image tower")
        pixels = dali_preprocess([paths[row] for row in rows], self.config.preprocess)
        text = None
        if self.config.text_features:
            text = np.load(self.arrays / "item_text_emb.npy")[FIRST_ITEM_INDEX:][rows]
        attrs = np.load(self.arrays / "item_attrs.npy")[FIRST_ITEM_INDEX:][rows]
        tower_config = self.config.image_tower
        tower, losses = train_image_tower(pixels, text, attrs, n_attributes, tower_config)
        save_tower(
            tower,
            tower_config,
            self.root / IMAGE_TOWER,
            {"preprocess": asdict(self.config.preprocess), "losses": losses},
        )
        vectors = np.zeros((len(paths), tower_config.dim), np.float32)
        vectors[rows] = embed_images(tower, pixels)
        column = pa.array(list(vectors), pa.list_(pa.float32()))
        self.catalog = Catalog(
            self.catalog.table.append_column(IMAGE_EMBEDDING, column), self.catalog.item_ids
        )

    def _write_text_features(self) -> None:
        progress = self.config.progress
        texts = self.catalog.table.column("text").to_pylist()
        item_emb = np.zeros((len(texts) + FIRST_ITEM_INDEX, features.TEXT_DIM), np.float32)
        item_emb[FIRST_ITEM_INDEX:] = features.embed_texts(
            texts, progress=progress, desc="item text"
        )
        np.save(self.arrays / "item_text_emb.npy", item_emb)  # (I+2, 384)
        query_emb = np.zeros((len(self.queries), features.TEXT_DIM), np.float32)
        query_emb[1:] = features.embed_texts(self.queries[1:], progress=progress, desc="queries")
        np.save(self.arrays / "query_text_emb.npy", query_emb)  # (Q, 384)


def _image_paths(catalog: Catalog, base: Path | None) -> list[Path | None] | None:
    """The image file of each item (None = no image), each checked to exist and decode, when
    the catalog names image files and has no precomputed vectors; else None."""
    table = catalog.table
    if IMAGE_REF not in table.column_names or IMAGE_EMBEDDING in table.column_names:
        return None
    from seminar.data.images import check_images, resolve_refs

    paths = resolve_refs(table.column(IMAGE_REF).to_pylist(), base or Path.cwd())
    check_images(catalog.item_ids.tolist(), paths)
    return paths


def write_meta(
    root: Path,
    *,
    name: str,
    synthetic: bool,
    positive_rule: str,
    config: PrepareConfig,
    stats: Stats,
    sources: dict[str, str],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write meta.json last (its presence marks a complete dataset); returns it."""
    meta: dict[str, Any] = {
        "name": name,
        "synthetic": synthetic,
        "schema_version": SCHEMA_VERSION,
        "positive_rule": positive_rule,
        "seed": config.seed,
        "negatives": config.negatives,
        "min_positives": config.min_positives,
        "query_tokens": QUERY_TOKENS,
        "text_encoder": features.TEXT_ENCODER if config.text_features else None,
        "stats": stats.to_dict(),
        "sources": sources,
        "checksum": directory_checksum(root),
        **(extra or {}),
    }
    (root / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    return meta


def directory_checksum(root: Path) -> str:
    """sha256 over every file under `root` but meta.json (relative path + bytes)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != META_FILE):
        digest.update(str(path.relative_to(root)).encode())
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def user_chunks(offsets: np.ndarray, chunk_rows: int) -> Iterator[tuple[int, int]]:
    """(start_row, stop_row) spans of whole users, about `chunk_rows` events each."""
    n_users = len(offsets) - 1
    u = 0
    while u < n_users:
        target = offsets[u] + chunk_rows
        v = max(u + 1, int(np.searchsorted(offsets, target, side="right")) - 1)
        v = min(v, n_users)
        yield int(offsets[u]), int(offsets[v])
        u = v


def prepare_tables(
    events: pa.Table,
    items: pa.Table,
    out: Path,
    *,
    name: str,
    positive_rule: str,
    sources: dict[str, str],
    config: PrepareConfig,
    events_file: str,
    extra_meta: dict[str, Any] | None = None,
    image_base: Path | None = None,
    carry: tuple[Path, ...] = (),
) -> Stats:
    """The in-memory path (MovieLens, users' own logs): validated tables -> prepared dataset.

    events must already be validated (schema.validate_events); rows are ordered by user, time,
    then their order in `events` (the stable tie-break). Relative image_ref paths start from
    `image_base` (the items file's folder). Each folder of `carry` is copied into the new
    dataset under its own name (an appended dataset keeps its base's image tower).
    """
    catalog = Catalog.from_table(items)
    index = catalog.index_of(events.column("item_id"))
    if (unknown := np.flatnonzero(index < FIRST_ITEM_INDEX)).size:
        first = events.column("item_id")[int(unknown[0])].as_py()
        raise DataError(
            f"{events_file}: column 'item_id' has {unknown.size} events whose item is not in the "
            f"catalog (first: {first} at row {int(unknown[0])})."
        )
    order = np.arange(events.num_rows, dtype=np.int64)
    keyed = events.append_column("_order", pa.array(order))
    sort = [("user_id", "ascending"), ("timestamp", "ascending"), ("_order", "ascending")]
    events = events.take(pc.sort_indices(keyed, sort_keys=sort))
    user_ids, counts = np.unique(events.column("user_id").to_numpy(), return_counts=True)
    is_search = pc.equal(events.column("event_type"), EventType.SEARCH.value)
    searched = pc.unique(events.column("query").filter(is_search)).to_pylist()
    queries = ["", *sorted(q for q in searched if q)]

    with atomic_output(out) as tmp:
        writer = DatasetWriter(tmp, catalog, queries, user_ids, counts, config, image_base)
        for start, stop in user_chunks(writer.offsets, config.chunk_rows):
            writer.write(events.slice(start, stop - start))
        stats = writer.finish()
        for folder in carry:
            shutil.copytree(folder, tmp / folder.name)
        write_meta(
            tmp,
            name=name,
            synthetic=False,
            positive_rule=positive_rule,
            config=config,
            stats=stats,
            sources=sources,
            extra=extra_meta,
        )
    return stats
