"""Compaction, `seminar data append`: the online event log folded into a prepared dataset, on a
real SQLite file and a real redis-server. Every logged event ends up in the new dataset
exactly once, across appends and while writers keep recording; a rebuilt version's PQ store
holds every logged event once and records the new watermark."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from seminar import contract, manifest
from seminar.cli import app
from seminar.data.append import AppendConfig, append_events
from seminar.data.dataset import PreparedDataset
from seminar.data.prepare import META_FILE, directory_checksum
from seminar.errors import ArtifactError, DataError
from seminar.events import Event, EventLog, EventType, StoredEvent, Watermark, open_event_log
from seminar.pq.artifacts import read_store_watermark
from seminar.processes import free_port

QUIET = AppendConfig(progress=False)
NEW_USER = 9_000_001
NEW_ITEM = 8_000_001


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small SYNTHETIC dataset (60 users, 150 items, image vectors): appends take seconds."""
    from seminar.data.prepare import PrepareConfig
    from seminar.data.synthetic import SyntheticConfig, prepare_synthetic

    out = tmp_path_factory.mktemp("append") / "data"
    config = SyntheticConfig(users=60, events_per_user=50, items=150, topics=4, seed=3, image_dim=8)
    prepare_synthetic(config, out, PrepareConfig(seed=config.seed, progress=False))
    return out


def mixed_events(dataset: PreparedDataset, prefix: str) -> list[Event]:
    """Existing users and a new one, a catalog item and an unknown one, search and rec,
    clicked and not, a rec event carrying a query, a client timestamp older than the
    user's history."""
    first, second = (int(user) for user in dataset.user_ids[:2])
    known = dataset.item_id(2)
    return [
        Event(f"{prefix}1", first, known, "", EventType.REC, True),
        Event(f"{prefix}2", first, NEW_ITEM, "fresh summer query", EventType.SEARCH, False),
        Event(f"{prefix}3", second, known, dataset.queries[1], EventType.SEARCH, True),
        Event(f"{prefix}4", NEW_USER, known, "", EventType.REC, False),
        Event(f"{prefix}5", NEW_USER, NEW_ITEM, "", EventType.REC, True, timestamp_ms=1_000),
        Event(f"{prefix}6", second, known, "ignored on rec", EventType.REC, False),
        Event(f"{prefix}7", first, known, "", EventType.REC, False, timestamp_ms=5_000),
    ]


def user_counts(dataset: PreparedDataset) -> dict[int, int]:
    return dict(zip(dataset.user_ids.tolist(), np.diff(dataset.seq_offsets).tolist(), strict=True))


def stored_rows(dataset: PreparedDataset, user_id: int) -> list[tuple[int, str, int]]:
    """(item id, query text, label) of a user's events, in sequence order."""
    history = dataset.history(dataset.user_index(user_id))
    return [
        (dataset.item_id(int(item)), dataset.queries[int(query)], int(label))
        for item, query, label in zip(history.item, history.query, history.label, strict=True)
    ]


def logged_row(stored: StoredEvent) -> tuple[int, str, int]:
    event = stored.event
    query = event.query if event.type is EventType.SEARCH else ""
    return (event.item_id, query, int(event.clicked))


def assert_folded_once(
    base: PreparedDataset, appended: PreparedDataset, logged: list[StoredEvent]
) -> None:
    """Every user: the base's events, unchanged, then exactly its logged events in seq order."""
    by_user: dict[int, list[StoredEvent]] = {}
    for stored in sorted(logged, key=lambda stored: stored.seq):
        by_user.setdefault(stored.event.user_id, []).append(stored)
    before = user_counts(base)
    after = user_counts(appended)
    assert set(after) == set(before) | set(by_user)
    for user_id, count in after.items():
        mine = by_user.get(user_id, [])
        assert count == before.get(user_id, 0) + len(mine), f"user {user_id}"
        rows = stored_rows(appended, user_id)
        if user_id in before:
            assert rows[: before[user_id]] == stored_rows(base, user_id)
        assert rows[before.get(user_id, 0) :] == [logged_row(stored) for stored in mine]
    times = np.asarray(appended.seq_time)
    for user_index in range(appended.n_users):
        start, stop = appended.user_span(user_index)
        assert (np.diff(times[start:stop]) >= 0).all(), "a user's events out of time order"


def run_append(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["data", "append", *args])
    return result.exit_code, result.output


def meta_of(data: Path) -> dict:
    return json.loads((data / META_FILE).read_text())


def test_every_logged_event_is_folded_once_and_the_mark_moves(
    small_data: Path, event_log: EventLog, tmp_path: Path
) -> None:
    base = PreparedDataset.load(small_data)
    before_meta = (small_data / META_FILE).read_bytes()
    event_log.append(mixed_events(base, "a"))
    high = event_log.high_watermark()

    fold, stats = append_events(small_data, event_log, tmp_path / "new", config=QUIET)

    appended = PreparedDataset.load(tmp_path / "new")
    assert_folded_once(base, appended, event_log.read_range(0, high))
    assert (fold.events, fold.new_users, fold.new_items) == (7, 1, 1)
    assert (fold.watermark_from, fold.watermark_to) == (0, high)
    assert stats.events == base.n_events + 7 and stats.users == base.n_users + 1
    assert appended.event_log_mark == Watermark(event_log.log_id(), high)
    assert appended.meta["appends"] == [fold.to_json()]
    assert appended.synthetic and appended.meta["checksum"] == directory_checksum(appended.path)
    assert "clicked" in appended.meta["positive_rule"]
    # The unknown item joined the catalog, empty, with a zero image vector.
    items = appended.items_table().to_pylist()
    added = next(item for item in items if item["item_id"] == NEW_ITEM)
    assert (added["text"], added["attributes"]) == ("", [])
    assert added["image_embedding"] == [0.0] * 8
    assert "fresh summer query" in appended.queries
    # The dataset appended to is untouched.
    assert (small_data / META_FILE).read_bytes() == before_meta
    assert directory_checksum(small_data) == base.meta["checksum"]


def test_a_second_append_adds_only_what_was_logged_after_the_mark(
    small_data: Path, event_log: EventLog, log_url: str, tmp_path: Path
) -> None:
    base = PreparedDataset.load(small_data)
    first_batch = mixed_events(base, "a")
    event_log.append(first_batch)
    append_events(small_data, event_log, tmp_path / "one", config=QUIET)
    first_mark = PreparedDataset.load(tmp_path / "one").event_log_mark

    # A client retrying the first batch stores nothing again; new events follow.
    assert event_log.append(first_batch).duplicate_count == len(first_batch)
    event_log.append(mixed_events(base, "b"))
    code, output = run_append(
        *("--data", str(tmp_path / "one"), "--event-log", log_url),
        *("--out", str(tmp_path / "two"), "--json"),
    )
    assert code == 0, output
    printed = json.loads(output.strip().splitlines()[-1])
    assert printed["watermark_from"] == first_mark.watermark and printed["events"] == 7
    assert printed["new_users"] == 0 and printed["new_items"] == 0

    two = PreparedDataset.load(tmp_path / "two")
    assert_folded_once(base, two, event_log.read_range(0, event_log.high_watermark()))
    assert [record["events"] for record in two.meta["appends"]] == [7, 7]
    assert two.event_log_mark == Watermark(event_log.log_id(), event_log.high_watermark())

    # Nothing logged since: the same dataset again, only meta.json's append record added.
    fold, _ = append_events(tmp_path / "two", event_log, tmp_path / "three", config=QUIET)
    three = PreparedDataset.load(tmp_path / "three")
    assert fold.events == 0 and three.event_log_mark == two.event_log_mark
    assert three.meta["checksum"] == directory_checksum(tmp_path / "three") == two.meta["checksum"]
    assert len(three.meta["appends"]) == 3


class CommitsWhileReading:
    """The log an append reads, with another writer committing a batch right after the
    append took its high watermark and before each page it reads."""

    def __init__(self, log: EventLog, writer: EventLog, make_batch: Callable[[], list[Event]]):
        self.log, self.writer, self.make_batch = log, writer, make_batch

    def __getattr__(self, name: str) -> object:
        return getattr(self.log, name)

    def high_watermark(self) -> int:
        high = self.log.high_watermark()
        self.writer.append(self.make_batch())
        return high

    def read_range(self, after_seq: int, up_to_seq: int, limit: int | None = None) -> list:
        self.writer.append(self.make_batch())
        return self.log.read_range(after_seq, up_to_seq, limit)


def test_events_recorded_during_an_append_are_folded_or_left_after_the_mark(
    small_data: Path, open_log: Callable[[], EventLog], tmp_path: Path
) -> None:
    base = PreparedDataset.load(small_data)
    reader, planted, background = open_log(), open_log(), open_log()
    known = [int(user) for user in base.user_ids[:5]]
    made = Counter[str]()

    def batch(kind: str, size: int = 3) -> list[Event]:
        made[kind] += 1
        number = made[kind]
        users = [*known, NEW_USER + number % 4]
        return [
            Event(
                f"{kind}{number}-{i}",
                users[(number + i) % len(users)],
                base.item_id(2 + i),
                "",
                EventType.REC,
                (number + i) % 2 == 0,
            )
            for i in range(size)
        ]

    reader.append(batch("before", 10))
    stop = threading.Event()

    def keep_recording() -> None:
        while not stop.is_set():
            background.append(batch("during"))

    thread = threading.Thread(target=keep_recording)
    thread.start()
    try:
        log = CommitsWhileReading(reader, planted, lambda: batch("planted"))
        fold, _ = append_events(
            small_data, log, tmp_path / "new", config=AppendConfig(page_events=4, progress=False)
        )  # type: ignore[arg-type]  # a proxy of an EventLog
    finally:
        stop.set()
        thread.join()

    logged = reader.read_range(0, reader.high_watermark())
    folded = [stored for stored in logged if stored.seq <= fold.watermark_to]
    after = [stored for stored in logged if stored.seq > fold.watermark_to]
    assert folded and after, "the test must see events on both sides of the mark"
    assert made["planted"] >= 4  # after the watermark was taken and between pages
    assert_folded_once(base, PreparedDataset.load(tmp_path / "new"), folded)
    # What was left after the mark is what the next append folds: none lost, none twice.
    append_events(tmp_path / "new", reader, tmp_path / "next", config=QUIET)
    assert_folded_once(base, PreparedDataset.load(tmp_path / "next"), logged)


def test_append_refuses_another_log_an_older_log_a_bad_dataset_and_a_taken_out(
    small_data: Path, tmp_path: Path
) -> None:
    url = f"sqlite://{tmp_path / 'events.db'}"
    with open_event_log(url) as log:
        log.append(
            [
                Event(
                    "x1",
                    int(PreparedDataset.load(small_data).user_ids[0]),
                    10,
                    "",
                    EventType.REC,
                    True,
                )
            ]
        )
    # The log as it was then: the same id, the same event.
    with (
        sqlite3.connect(tmp_path / "events.db") as source,
        sqlite3.connect(tmp_path / "old.db") as copy,
    ):
        source.backup(copy)
    with open_event_log(url) as log:
        log.append([Event("x2", 1, 10, "", EventType.REC, False)])
    folded = tmp_path / "folded"
    code, output = run_append("--data", str(small_data), "--event-log", url, "--out", str(folded))
    assert code == 0, output

    def refused(data: Path, log_url: str, out: Path, *extra: str) -> tuple[int, str]:
        code, output = run_append(
            "--data", str(data), "--event-log", log_url, "--out", str(out), *extra
        )
        assert not (out.exists() and out != folded and out != small_data), "refused, yet wrote"
        return code, " ".join(output.split())

    with open_event_log(f"sqlite://{tmp_path / 'other.db'}") as other:
        other.append([Event("o1", 1, 10, "", EventType.REC, True)])
    code, output = refused(folded, f"sqlite://{tmp_path / 'other.db'}", tmp_path / "a")
    assert code == DataError.exit_code and "count events twice" in output
    code, output = refused(folded, f"sqlite://{tmp_path / 'old.db'}", tmp_path / "b")
    assert code == DataError.exit_code and "restored from an older copy" in output
    code, output = refused(folded, f"redis://127.0.0.1:{free_port()}", tmp_path / "c")
    assert code == 6 and "event log redis" in output
    code, output = refused(folded, url, folded, "--force")
    assert code == 5 and "never changes it" in output
    code, output = refused(small_data, url, folded)
    assert code == 5 and "--force" in output

    code, output = refused(folded, f"sqlite://{tmp_path / 'typo.db'}", tmp_path / "g")
    assert code == DataError.exit_code and "no event log there" in output
    assert not (tmp_path / "typo.db").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    code, output = refused(empty, url, tmp_path / "d")
    assert code == DataError.exit_code and "not a prepared dataset" in output
    meta = meta_of(folded)
    meta["event_log"] = {"log_id": 5}
    (folded / META_FILE).write_text(json.dumps(meta))
    code, output = refused(folded, url, tmp_path / "e")
    assert code == DataError.exit_code and "field 'event_log'" in output
    (folded / "arrays" / "seq_item.npy").write_bytes(b"\x93NUMPY truncated")
    code, output = refused(folded, url, tmp_path / "f")
    assert code == DataError.exit_code and "seq_item.npy" in output
    assert not any(path.name.startswith("f.tmp-") for path in tmp_path.iterdir())


def test_a_store_records_the_watermark_or_none(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "bad").mkdir()
    manifest.write_manifest(tmp_path / "old", {"format": "seminar-pq/2"}, [])
    assert read_store_watermark(tmp_path / "old") == Watermark()
    manifest.write_manifest(tmp_path / "bad", {contract.EVENT_LOG_FIELD: {"watermark": "3"}}, [])
    with pytest.raises(ArtifactError, match="event_log"):
        read_store_watermark(tmp_path / "bad")


def test_append_rebuild_and_count(small_data: Path, tmp_path: Path) -> None:
    """The version built from the appended dataset: its PQ store holds every user's base
    events and logged events, each once, and its manifest and build.json the new mark. (The
    build reads the dataset, not the log: one log kind is enough.)"""
    from seminar.pq import SequenceStore
    from tests.support.build import build_cli
    from tests.support.training import train_tiny

    base = PreparedDataset.load(small_data)
    event_log = open_event_log(f"sqlite://{tmp_path / 'events.db'}")
    event_log.append(mixed_events(base, "a"))
    append_events(small_data, event_log, tmp_path / "one", config=QUIET)
    event_log.append(mixed_events(base, "b"))
    append_events(tmp_path / "one", event_log, tmp_path / "two", config=QUIET)
    appended = PreparedDataset.load(tmp_path / "two")
    logged = event_log.read_range(0, event_log.high_watermark())
    assert len(logged) == 14
    assert_folded_once(base, appended, logged)

    train_tiny(tmp_path / "two", tmp_path / "run", max_train_targets=512, eval_users=16)
    repo = tmp_path / "model_repository"
    result = build_cli(
        tmp_path / "run", repo, 1, "--data", str(tmp_path / "two"), "--no-polygraphy"
    )
    assert result.exit_code == 0, result.output

    pq_dir = repo / contract.PQ_RETRIEVAL_MODEL / "1" / contract.PQ_DIR
    store = SequenceStore.load(pq_dir / "store", verify=True)
    per_user = dict(zip(appended.user_ids.tolist(), np.diff(store.offsets).tolist(), strict=True))
    logged_per_user = Counter(stored.event.user_id for stored in logged)
    for user_id, count in user_counts(base).items():
        assert per_user.pop(user_id) == count + logged_per_user.pop(user_id, 0), f"user {user_id}"
    assert per_user == dict(logged_per_user)  # the new user: its logged events only
    assert np.array_equal(store.item, appended.seq_item)
    assert np.array_equal(store.query, appended.seq_query)
    mark = Watermark(event_log.log_id(), event_log.high_watermark())
    assert read_store_watermark(pq_dir) == mark
    build_info = json.loads(contract.build_info_path(repo, 1).read_text())
    assert build_info[contract.EVENT_LOG_FIELD] == mark.to_json()
    card = contract.build_info_path(repo, 1).with_name(contract.MODEL_CARD_FILE).read_text()
    assert f"up to seq {mark.watermark}" in card
    event_log.close()


def test_an_appended_dataset_keeps_its_image_vectors_and_tower(
    event_log: EventLog, tmp_path: Path
) -> None:
    from seminar.data.prepare import IMAGE_TOWER, PrepareConfig
    from seminar.data.synthetic import SyntheticConfig, prepare_synthetic
    from seminar.model.config import ImageTowerConfig

    config = SyntheticConfig(users=20, events_per_user=20, items=60, topics=3, seed=3, images=True)
    tower = ImageTowerConfig(epochs=2, batch_size=32)
    prepare = PrepareConfig(seed=3, text_features=False, progress=False, image_tower=tower)
    prepare_synthetic(config, tmp_path / "data", prepare)
    base = PreparedDataset.load(tmp_path / "data")
    event_log.append(mixed_events(base, "img"))
    append_events(tmp_path / "data", event_log, tmp_path / "new", config=QUIET)
    appended = PreparedDataset.load(tmp_path / "new")
    vectors = np.asarray(appended.item_image_emb)
    # Catalog items keep their vectors (not re-embedded); the logged new item has none.
    np.testing.assert_array_equal(vectors[: base.n_item_rows], np.asarray(base.item_image_emb))
    assert vectors.shape[0] == base.n_item_rows + 1 and not vectors[-1].any()
    weights = f"{IMAGE_TOWER}/weights.safetensors"
    assert (tmp_path / "new" / weights).read_bytes() == (tmp_path / "data" / weights).read_bytes()
    assert len(list((tmp_path / "new" / "images").glob("*.jpg"))) == 60
