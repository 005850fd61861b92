"""MovieLens (ml-latest-small layout) -> canonical event log and item catalog.

- ratings.csv -> rec events; label = 1 if rating >= 4.0 else 0. Every rating stays in the history.
- tags.csv    -> search events whose query is the tag text; label = 1 (the user chose to tag it).
- movies.csv  -> items: text = "title | genre, genre"; attributes = `genre=<g>` per genre plus
  `decade=<1990s>` parsed from the "(1995)" at the end of the title (`decade=unknown` without one).
Source order (the tie-break for equal timestamps) is ratings.csv rows, then tags.csv rows.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from seminar.data.prepare import PrepareConfig, Stats, prepare_tables
from seminar.data.schema import EventType, validate_events, validate_items
from seminar.errors import DataError
from seminar.manifest import sha256_file

POSITIVE_RATING: Final = 4.0
POSITIVE_RULE: Final = "rec events (ratings): rating >= 4.0; search events (tags): always positive"
NO_GENRES: Final = "(no genres listed)"
# "(1995)" or a series span "(2006–2007)" / "(2007-)" at the end of the title.
_YEAR = re.compile(r"\((\d{4})(?:\s*[-–]\s*\d{0,4})?\)\s*$")

_COLUMNS: Final = {
    "ratings.csv": {
        "userId": pa.int64(),
        "movieId": pa.int64(),
        "rating": pa.float64(),
        "timestamp": pa.int64(),
    },
    "tags.csv": {
        "userId": pa.int64(),
        "movieId": pa.int64(),
        "tag": pa.string(),
        "timestamp": pa.int64(),
    },
    "movies.csv": {"movieId": pa.int64(), "title": pa.string(), "genres": pa.string()},
}


def decade(title: str) -> str:
    """`1990s` from "Toy Story (1995)"; `unknown` when the title carries no year."""
    match = _YEAR.search(title)
    return f"{int(match.group(1)) // 10 * 10}s" if match else "unknown"


def genres(field: str) -> list[str]:
    return [] if field in ("", NO_GENRES) else field.split("|")


def item_text(title: str, item_genres: list[str]) -> str:
    return f"{title} | {', '.join(item_genres)}" if item_genres else title


def _read_csv(source: Path, name: str) -> pa.Table:
    path = source / name
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected the ml-latest-small layout).")
    columns = _COLUMNS[name]
    try:
        table = pcsv.read_csv(
            path,
            convert_options=pcsv.ConvertOptions(column_types=columns, strings_can_be_null=False),
        )
    except pa.ArrowInvalid as err:
        raise DataError(f"{path}: cannot be parsed as MovieLens CSV ({err}).") from err
    for column in columns:
        if column not in table.column_names:
            raise DataError(f"{path}: missing column '{column}'.")
    if table.num_rows == 0:
        raise DataError(f"{path} has no rows.")
    return table


def load_tables(source: Path) -> tuple[pa.Table, pa.Table]:
    """Canonical (events, items) tables from an ml-latest-small directory."""
    ratings = _read_csv(source, "ratings.csv")
    tags = _read_csv(source, "tags.csv")
    movies = _read_csv(source, "movies.csv")

    n_r, n_t = ratings.num_rows, tags.num_rows
    label = pc.greater_equal(ratings.column("rating"), POSITIVE_RATING).cast(pa.int8())
    events = pa.table(
        {
            "user_id": pa.chunked_array(
                ratings.column("userId").chunks + tags.column("userId").chunks
            ),
            "item_id": pa.chunked_array(
                ratings.column("movieId").chunks + tags.column("movieId").chunks
            ),
            "timestamp": pa.chunked_array(
                ratings.column("timestamp").chunks + tags.column("timestamp").chunks
            ),
            "event_type": pa.array([EventType.REC.value] * n_r + [EventType.SEARCH.value] * n_t),
            "query": pa.chunked_array(
                [pa.array([""] * n_r, pa.string()), *tags.column("tag").cast(pa.string()).chunks]
            ),
            "label": pa.chunked_array([*label.chunks, pa.array(np.ones(n_t, np.int8))]),
        }
    )
    titles = movies.column("title").to_pylist()
    per_movie = [genres(g) for g in movies.column("genres").to_pylist()]
    items = pa.table(
        {
            "item_id": movies.column("movieId"),
            "text": [item_text(t, g) for t, g in zip(titles, per_movie, strict=True)],
            "attributes": pa.array(
                [
                    [f"genre={g}" for g in gs] + [f"decade={decade(t)}"]
                    for t, gs in zip(titles, per_movie, strict=True)
                ],
                pa.list_(pa.string()),
            ),
        }
    )
    return (
        validate_events(events, source / "ratings.csv+tags.csv"),
        validate_items(items, source / "movies.csv"),
    )


def prepare_movielens(source: Path, out: Path, config: PrepareConfig) -> Stats:
    events, items = load_tables(source)
    sources = {
        name: sha256_file(source / name) for name in ("ratings.csv", "tags.csv", "movies.csv")
    }
    return prepare_tables(
        events,
        items,
        out,
        name=f"movielens-{source.name}",
        positive_rule=POSITIVE_RULE,
        sources=sources,
        config=config,
        events_file=str(source / "ratings.csv"),
    )
