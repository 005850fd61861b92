"""Compaction: fold the online event log into a prepared dataset (`seminar data append`).

A prepared dataset records in meta.json the log position it holds the events up to, its mark
`Watermark(log_id, W)` under contract.EVENT_LOG_FIELD (absent = W 0: no logged event folded).
`append_events` takes W_new = `log.high_watermark()` before it reads, reads exactly the events
with W < seq <= W_new (in pages), turns each into a canonical event row, adds them after the
dataset's own events and runs the shared pipeline (seminar.data.prepare.prepare_tables) on the
combined events and catalog into a new directory whose mark is Watermark(log_id, W_new).

Why no event is counted twice or dropped: by the log's contract (seminar.events, rules 3-4)
every event with seq <= W_new is visible once high_watermark() has returned W_new, and every
event committed later gets a larger seq. So the events folded are exactly W < seq <= W_new,
the previous appends folded exactly those <= W, and the events after W_new are the online tail
that serving reads after the new mark, and that the next append folds.

A logged event becomes the row
    user_id, item_id   as recorded (a new user is a new user of the dataset)
    timestamp          timestamp_ms // 1000, raised to the user's latest earlier timestamp:
                       folded events stay after the user's base history, in log (seq) order,
                       the order serving scores the tail in
    event_type         "search" | "rec"
    query              the query of a search event; "" for a rec event (canonical rule)
    label              1 if clicked else 0
Impressions (EventType.IMPRESSION) are skipped: they are outcome data, not history.
An item id missing from the catalog is added to it as an item with empty text, no attributes
(and a zero image vector, an empty image_ref where the catalog has those columns), so that no
logged event is dropped; the count is reported.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from seminar import contract
from seminar.data.dataset import PreparedDataset
from seminar.data.images import SYNTHETIC_IMAGES
from seminar.data.new_items import new_catalog_rows
from seminar.data.prepare import (
    IMAGE_TOWER,
    META_FILE,
    PrepareConfig,
    Stats,
    atomic_output,
    note,
    prepare_tables,
)
from seminar.data.schema import (
    EVENTS_SCHEMA,
    IMAGE_EMBEDDING,
    IMAGE_REF,
    validate_events,
)
from seminar.errors import ConflictError, DataError
from seminar.events import EventLog, StoredEvent, Watermark, open_event_log
from seminar.events.log import SQLITE_SCHEME

APPENDS_FIELD = "appends"  # meta.json: one record per append that led to this dataset
LOGGED_RULE = "logged events (seminar data append): clicked"


@dataclass(frozen=True)
class AppendConfig:
    """How an append reads the log; defaults live here only."""

    page_events: int = 50_000  # events per read_range call (bounds one reply of the log)
    progress: bool = True  # progress lines (and bars on a terminal) on stderr

    def __post_init__(self) -> None:
        if self.page_events < 1:
            raise ValueError(f"page_events must be >= 1, got {self.page_events}")


@dataclass(frozen=True)
class Fold:
    """What one append folded, as meta.json's `appends` records it."""

    log_id: str
    watermark_from: int  # the dataset's mark before (W)
    watermark_to: int  # the new dataset's mark (W_new)
    events: int  # logged events folded (W < seq <= W_new)
    new_users: int  # users the dataset did not have
    new_items: int  # item ids added to the catalog (empty text, no attributes)
    catalog_items: int = 0  # items added with their content (--items)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def open_existing_log(url: str) -> EventLog:
    """The log at `url`, which must exist: opening a SQLite path creates an empty log, and an
    append from a mistyped path would fold nothing and mark the wrong log."""
    if url.startswith(SQLITE_SCHEME):
        path = Path(url.removeprefix(SQLITE_SCHEME))
        if not path.is_file():
            raise DataError(f"{path}: no event log there (the gateway's --event-log creates it)")
    return open_event_log(url)


def read_logged(
    log: EventLog, after_seq: int, up_to_seq: int, config: AppendConfig
) -> list[StoredEvent]:
    """Every history event with after_seq < seq <= up_to_seq (impressions skipped), read in
    pages of `page_events`."""
    from tqdm.auto import tqdm

    note(config, f"event log: reading seq {after_seq + 1:,} to {up_to_seq:,} of {log.url}")
    events: list[StoredEvent] = []
    cursor = after_seq
    bar_off = None if config.progress else True  # disable=None: a bar only on a terminal
    with tqdm(total=up_to_seq - after_seq, desc="log seq", unit="seq", disable=bar_off) as bar:
        while cursor < up_to_seq:
            page = log.read_range(cursor, up_to_seq, limit=config.page_events)
            if not page:
                break
            # Impressions are outcome data (A/B reports), never part of a history.
            events += [stored for stored in page if stored.event.is_history]
            bar.update(page[-1].seq - cursor)
            cursor = page[-1].seq
    note(config, f"event log: {len(events):,} events read")
    return events


def logged_rows(logged: list[StoredEvent], dataset: PreparedDataset, source: str) -> pa.Table:
    """The canonical rows of logged events (module docstring), in log order; `source` names
    the log in errors."""
    latest: dict[int, int] = {}  # user id -> latest timestamp (seconds) so far
    for user_index, user_id in enumerate(dataset.user_ids):
        stop = int(dataset.seq_offsets[user_index + 1])
        if stop > int(dataset.seq_offsets[user_index]):
            latest[int(user_id)] = int(dataset.seq_time[stop - 1])
    timestamps = []
    for stored in logged:
        event = stored.event
        seconds = max(event.timestamp_ms // 1000, latest.get(event.user_id, 0))
        latest[event.user_id] = seconds
        timestamps.append(seconds)
    columns = {
        "user_id": [stored.event.user_id for stored in logged],
        "item_id": [stored.event.item_id for stored in logged],
        "timestamp": timestamps,
        "event_type": [str(stored.event.type) for stored in logged],
        "query": [stored.event.history_query for stored in logged],
        "label": [int(stored.event.clicked) for stored in logged],
    }
    # The log's own checks are not the canonical schema's: check the rows against it too.
    return validate_events(pa.Table.from_pydict(columns, schema=EVENTS_SCHEMA), Path(source))


def catalog_with(items: pa.Table, item_ids: np.ndarray) -> tuple[pa.Table, int]:
    """The catalog plus an empty item (module docstring) per id it lacks; and how many."""
    known = items.column("item_id").to_numpy()
    missing = np.setdiff1d(np.unique(item_ids), known)
    if missing.size == 0:
        return items, 0
    added: dict[str, pa.Array] = {
        "item_id": pa.array(missing, pa.int64()),
        "text": pa.array([""] * missing.size, pa.string()),
        "attributes": pa.array([[]] * missing.size, pa.list_(pa.string())),
    }
    if IMAGE_REF in items.column_names:
        added[IMAGE_REF] = pa.array([""] * missing.size, pa.string())
    if IMAGE_EMBEDDING in items.column_names:
        dim = len(items.column(IMAGE_EMBEDDING)[0].values)
        added[IMAGE_EMBEDDING] = pa.array(
            [[0.0] * dim] * missing.size, items.schema.field(IMAGE_EMBEDDING).type
        )
    extra = pa.table(added, schema=items.schema)
    return pa.concat_tables([items, extra]), int(missing.size)


def prepare_config_of(meta: dict[str, Any], progress: bool) -> PrepareConfig:
    """The pipeline settings a dataset was prepared with, from its meta.json."""
    defaults = PrepareConfig()
    return PrepareConfig(
        seed=int(meta.get("seed", defaults.seed)),
        negatives=int(meta.get("negatives", defaults.negatives)),
        min_positives=int(meta.get("min_positives", defaults.min_positives)),
        text_features=meta.get("text_encoder") is not None,
        progress=progress,
    )


def check_out(data: Path, out: Path, force: bool) -> None:
    """Refuse an --out that is DATA itself, or that exists without --force."""
    if out.resolve() == data.resolve():
        raise ConflictError(f"{out} is the dataset being appended to; the append never changes it")
    if out.exists() and not force:
        raise ConflictError(f"{out} exists; pass --force to replace it or choose another --out")


def append_events(
    data: Path,
    log: EventLog,
    out: Path,
    *,
    force: bool = False,
    config: AppendConfig | None = None,
    items: Path | None = None,
) -> tuple[Fold, Stats]:
    """Fold the events logged after DATA's mark, and the new items of the catalog file
    `items` (seminar.data.new_items), into a new prepared dataset at `out` (module docstring);
    returns what was folded and the new dataset's statistics. DATA is never modified; `out`
    appears whole or not at all."""
    config = config or AppendConfig()
    data, out = Path(data), Path(out)
    check_out(data, out, force)
    dataset = PreparedDataset.load(data)
    meta = dataset.meta
    mark = dataset.event_log_mark
    mark.check_log(log)
    log_id = log.log_id()
    # Taken before reading: every seq up to it is visible now, later commits get larger ones.
    high = log.high_watermark()
    if high < mark.watermark:
        raise DataError(
            f"event log {log.url} ends at seq {high}, but {data} holds its events up to seq "
            f"{mark.watermark}: the log lost events or was restored from an older copy"
        )
    logged = read_logged(log, mark.watermark, high, config)
    new_mark = Watermark(log_id, high)
    catalog = dataset.items_table()
    added = 0
    if items is not None:
        rows = new_catalog_rows(dataset, Path(items))
        catalog, added = pa.concat_tables([catalog, rows]), rows.num_rows
        note(config, f"catalog: {added:,} new items from {items}")

    if not logged and not added:
        note(config, f"event log: nothing after seq {mark.watermark}; {out} = {data}, new mark")
        fold = Fold(log_id, mark.watermark, high, events=0, new_users=0, new_items=0)
        with atomic_output(out) as tmp:
            shutil.copytree(data, tmp, dirs_exist_ok=True)
            appended = {**meta, **_meta_update(meta, new_mark, fold)}
            (tmp / META_FILE).write_text(
                json.dumps(appended, indent=2, ensure_ascii=False), encoding="utf-8"
            )
        return fold, Stats(**meta["stats"])

    rows = logged_rows(logged, dataset, log.url) if logged else EVENTS_SCHEMA.empty_table()
    catalog, new_items = catalog_with(catalog, rows.column("item_id").to_numpy())
    logged_users = np.unique(rows.column("user_id").to_numpy())
    new_users = int(np.setdiff1d(logged_users, dataset.user_ids).size)
    note(
        config,
        f"appending {rows.num_rows:,} logged events ({new_users:,} new users, {new_items:,} "
        f"new items) to the {dataset.n_events:,} events of {data}",
    )
    events = pa.concat_tables([dataset.events_table(), rows])
    fold = Fold(log_id, mark.watermark, high, rows.num_rows, new_users, new_items, added)
    rule = meta.get("positive_rule", "")
    stats = prepare_tables(
        events,
        catalog,
        out,
        name=str(meta.get("name", data.name)),
        positive_rule=rule if LOGGED_RULE in rule else f"{rule}; {LOGGED_RULE}",
        sources=dict(meta.get("sources", {})),
        config=prepare_config_of(meta, config.progress),
        events_file=str(data / "events.parquet"),
        extra_meta=_meta_update(meta, new_mark, fold),
        # The vectors of the base's images travel in items.parquet; the tower that made them
        # (and a synthetic dataset's own images) come along, so items that arrive later are
        # embedded by the same weights.
        carry=tuple(
            folder for folder in (data / IMAGE_TOWER, data / SYNTHETIC_IMAGES) if folder.is_dir()
        ),
    )
    return fold, stats


def _meta_update(meta: dict[str, Any], new_mark: Watermark, fold: Fold) -> dict[str, Any]:
    """meta.json fields an append sets: the new mark, the append records, the synthetic label
    (a synthetic dataset stays labelled so; its planted truth does not cover logged events
    and is not carried)."""
    return {
        "synthetic": bool(meta.get("synthetic")),
        contract.EVENT_LOG_FIELD: new_mark.to_json(),
        APPENDS_FIELD: [*meta.get(APPENDS_FIELD, []), fold.to_json()],
    }
