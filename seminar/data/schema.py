"""The canonical data schema (docs/data.md): an event log and an item catalog, as Parquet.

`read_events` / `read_items` read a user's file, check every column and return a table in the
canonical types. Any problem raises `DataError` with one sentence naming the file and column.

events.parquet                        items.parquet
  user_id     int64                     item_id          int64, unique
  item_id     int64 (in the catalog)    text             string (UTF-8)
  timestamp   int64 unix seconds        attributes       list<string>  (null = none)
  event_type  "search" | "rec"          image_ref        string, optional
  query       string ("" for rec)       image_embedding  list<float32>, optional, one length
  label       int8 0 | 1
"""

from __future__ import annotations

from enum import StrEnum, unique
from pathlib import Path
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from seminar.errors import DataError

SCHEMA_VERSION: Final = 1


@unique
class EventType(StrEnum):
    SEARCH = "search"  # the user searched `query` and interacted with `item_id`
    REC = "rec"  # a recommendation / browse interaction, no query


EVENTS_SCHEMA: Final = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        pa.field("label", pa.int8(), nullable=False),
    ]
)

ITEMS_SCHEMA: Final = pa.schema(
    [
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("attributes", pa.list_(pa.string()), nullable=False),
    ]
)
IMAGE_REF: Final = "image_ref"
IMAGE_EMBEDDING: Final = "image_embedding"


def read_parquet(path: str | Path) -> pa.Table:
    """Read a whole Parquet file; missing, empty, unreadable or row-less files are a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found.")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes), expected a Parquet file.")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path} is not a readable Parquet file ({err}).") from err
    if table.num_rows == 0:
        raise DataError(f"{path} has no rows.")
    return table


def read_events(path: str | Path) -> pa.Table:
    """Read and validate a canonical event log; returns it with EVENTS_SCHEMA, in file order."""
    return validate_events(read_parquet(path), Path(path))


def read_items(path: str | Path) -> pa.Table:
    """Read and validate a canonical item catalog; returns it in file order."""
    return validate_items(read_parquet(path), Path(path))


def validate_events(table: pa.Table, path: Path) -> pa.Table:
    """Check and cast an event table to EVENTS_SCHEMA (extra columns are dropped)."""
    _require(table, path, [f.name for f in EVENTS_SCHEMA])
    user_id = _integer(table, path, "user_id")
    item_id = _integer(table, path, "item_id")
    timestamp = _timestamp(table, path, "timestamp")
    event_type = _text(table, path, "event_type", nullable=False)
    bad = pc.invert(pc.is_in(event_type, value_set=pa.array([e.value for e in EventType])))
    _no_rows(path, "event_type", bad, event_type, "is not 'search' or 'rec'")
    query = _text(table, path, "query", nullable=True)
    is_search = pc.equal(event_type, EventType.SEARCH.value)
    _no_rows(
        path,
        "query",
        pc.and_(is_search, pc.equal(query, "")),
        query,
        "is empty on a search event (a search event needs its query text)",
    )
    _no_rows(
        path,
        "query",
        pc.and_(pc.invert(is_search), pc.not_equal(query, "")),
        query,
        "is set on a rec event (rec events have an empty query)",
    )
    label = _label(table, path, "label")
    return pa.Table.from_arrays(
        [user_id, item_id, timestamp, event_type, query, label], schema=EVENTS_SCHEMA
    )


def validate_items(table: pa.Table, path: Path) -> pa.Table:
    """Check and cast an item table; keeps the optional image columns when present."""
    _require(table, path, ["item_id", "text", "attributes"])
    item_id = _integer(table, path, "item_id")
    ids = item_id.to_numpy()
    unique_ids, counts = np.unique(ids, return_counts=True)
    if len(unique_ids) != len(ids):
        dup = unique_ids[counts > 1]
        raise DataError(
            f"{path}: column 'item_id' has {len(dup)} duplicate ids (first: {int(dup[0])})."
        )
    text = _text(table, path, "text", nullable=False)
    attributes = _attributes(table, path, "attributes")
    columns = [item_id, text, attributes]
    fields = list(ITEMS_SCHEMA)
    if IMAGE_REF in table.column_names:
        columns.append(_text(table, path, IMAGE_REF, nullable=True))
        fields.append(pa.field(IMAGE_REF, pa.string(), nullable=False))
    if IMAGE_EMBEDDING in table.column_names:
        columns.append(_embedding(table, path, IMAGE_EMBEDDING))
        fields.append(pa.field(IMAGE_EMBEDDING, pa.list_(pa.float32()), nullable=False))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def image_embeddings(items: pa.Table) -> np.ndarray | None:
    """(I, E) float32 image embeddings of a validated catalog, or None when it has none."""
    if IMAGE_EMBEDDING not in items.column_names:
        return None
    col = items.column(IMAGE_EMBEDDING).combine_chunks()
    dim = len(col[0].values) if len(col) else 0
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return flat.reshape(len(col), dim)  # (I, E)


# Column checks. Each returns a ChunkedArray in the canonical type or raises DataError.


def _require(table: pa.Table, path: Path, names: list[str]) -> None:
    for name in names:
        if name not in table.column_names:
            raise DataError(
                f"{path}: missing column '{name}' (found: {', '.join(table.column_names)})."
            )


def _no_nulls(col: pa.ChunkedArray, path: Path, name: str) -> None:
    if col.null_count:
        raise DataError(f"{path}: column '{name}' has {col.null_count} null values.")


def _integer(table: pa.Table, path: Path, name: str) -> pa.ChunkedArray:
    col = table.column(name)
    if not pa.types.is_integer(col.type):
        raise DataError(f"{path}: column '{name}' must be an integer type, found {col.type}.")
    _no_nulls(col, path, name)
    try:
        return col.cast(pa.int64())
    except pa.ArrowInvalid as err:
        raise DataError(f"{path}: column '{name}' has values that do not fit int64.") from err


def _timestamp(table: pa.Table, path: Path, name: str) -> pa.ChunkedArray:
    col = table.column(name)
    if pa.types.is_timestamp(col.type):
        _no_nulls(col, path, name)
        # A Parquet timestamp column is accepted too; canonical form is unix seconds.
        return pc.divide(col.cast(pa.int64()), _per_second(col.type.unit))
    return _integer(table, path, name)


def _per_second(unit: str) -> int:
    return {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]


def _label(table: pa.Table, path: Path, name: str) -> pa.ChunkedArray:
    col = table.column(name)
    if pa.types.is_boolean(col.type):
        _no_nulls(col, path, name)
        return col.cast(pa.int8())
    col = _integer(table, path, name)
    bad = pc.invert(pc.is_in(col, value_set=pa.array([0, 1], pa.int64())))
    _no_rows(path, name, bad, col, "is not 0 or 1")
    return col.cast(pa.int8())


def _utf8(col: pa.ChunkedArray, path: Path, name: str) -> pa.ChunkedArray:
    """Cast string/binary to string, rejecting bytes that are not valid UTF-8."""
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    try:
        if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
            col = col.cast(pa.string())
        elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            col.validate(full=True)  # Parquet readers do not check UTF-8 themselves
            col = col.cast(pa.string())
        else:
            raise DataError(f"{path}: column '{name}' must be a string type, found {col.type}.")
    except pa.ArrowInvalid as err:
        raise DataError(f"{path}: column '{name}' holds text that is not valid UTF-8.") from err
    return col


def _text(table: pa.Table, path: Path, name: str, *, nullable: bool) -> pa.ChunkedArray:
    col = _utf8(table.column(name), path, name)
    if not nullable:
        _no_nulls(col, path, name)
    return col.fill_null("")


def _attributes(table: pa.Table, path: Path, name: str) -> pa.ChunkedArray:
    col = table.column(name)
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
        raise DataError(f"{path}: column '{name}' must be a list of strings, found {col.type}.")
    chunks = []
    for chunk in col.chunks:
        values = _utf8(pa.chunked_array([chunk.flatten()], chunk.type.value_type), path, name)
        if values.null_count:
            raise DataError(f"{path}: column '{name}' has null entries inside its lists.")
        offsets = chunk.offsets  # a null list keeps equal offsets, so it becomes []
        if chunk.offset:
            offsets = pc.subtract(offsets, offsets[0])
        chunks.append(pa.ListArray.from_arrays(offsets.cast(pa.int32()), values.combine_chunks()))
    return pa.chunked_array(chunks, pa.list_(pa.string()))


def _embedding(table: pa.Table, path: Path, name: str) -> pa.ChunkedArray:
    col = table.column(name)
    list_type = (
        pa.types.is_list(col.type)
        or pa.types.is_large_list(col.type)
        or pa.types.is_fixed_size_list(col.type)
    )
    if not list_type or not pa.types.is_floating(col.type.value_type):
        raise DataError(f"{path}: column '{name}' must be a list of floats, found {col.type}.")
    _no_nulls(col, path, name)
    lengths = pc.unique(pc.list_value_length(col)).to_pylist()
    if len(lengths) != 1 or lengths[0] == 0:
        raise DataError(
            f"{path}: column '{name}' must have one non-zero length for every item, found {sorted(lengths)}."
        )
    return col.cast(pa.list_(pa.float32()))


def _no_rows(
    path: Path, name: str, bad: pa.ChunkedArray, values: pa.ChunkedArray, what: str
) -> None:
    """Raise naming the first row where `bad` is true."""
    count = pc.sum(bad.cast(pa.int64())).as_py() or 0
    if count:
        row = pc.index(bad, True).as_py()
        raise DataError(
            f"{path}: column '{name}' value {values[row].as_py()!r} at row {row} {what} ({count} rows)."
        )
