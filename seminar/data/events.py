"""Users' own logs: canonical events.parquet + items.parquet -> prepared dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from seminar.data.prepare import PrepareConfig, Stats, file_sha256, prepare_tables
from seminar.data.schema import read_events, read_items

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
            events_path.name: file_sha256(events_path),
            items_path.name: file_sha256(items_path),
        },
        config=config,
        events_file=str(events_path),
    )
