"""Users' own logs: canonical events.parquet + items.parquet -> prepared dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from seminar.data.prepare import PrepareConfig, Stats, prepare_tables
from seminar.data.schema import read_events, read_items
from seminar.manifest import sha256_file

POSITIVE_RULE: Final = "label == 1 (as given in the event log)"


def prepare_events(
    events_path: Path, items_path: Path, out: Path, name: str, config: PrepareConfig
) -> Stats:
    """Validate both files (DataError naming file and column), then run the shared pipeline."""
    items = read_items(items_path)
    events = read_events(events_path)
    return prepare_tables(
        events,
        items,
        out,
        name=name,
        positive_rule=POSITIVE_RULE,
        sources={
            events_path.name: sha256_file(events_path),
            items_path.name: sha256_file(items_path),
        },
        config=config,
        events_file=str(events_path),
        image_base=items_path.parent,
    )
