"""`seminar data prepare events`: users' own canonical Parquet logs, good and bad."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from seminar.data import features
from seminar.data.cli import app
from seminar.data.dataset import PreparedDataset
from seminar.data.events import prepare_events
from seminar.data.movielens import load_tables
from seminar.data.prepare import PrepareConfig
from tests.support.data import MOVIELENS_SOURCE

N_ITEMS, N_USERS, PER_USER = 120, 3, 12


def _items() -> dict[str, list]:
    return {
        "item_id": [100 + i for i in range(N_ITEMS)],
        "text": [f"tiny item number {i}" for i in range(N_ITEMS)],
        "attributes": [[f"shelf={i % 4}"] for i in range(N_ITEMS)],
    }


def _events() -> dict[str, list]:
    rows = {
        "user_id": [],
        "item_id": [],
        "timestamp": [],
        "event_type": [],
        "query": [],
        "label": [],
    }
    for u in range(N_USERS):
        for k in range(PER_USER):
            search = k % 3 == 0
            rows["user_id"].append(7 + u)
            rows["item_id"].append(100 + (u * 5 + k) % N_ITEMS)
            rows["timestamp"].append(1_600_000_000 + 60 * k)
            rows["event_type"].append("search" if search else "rec")
            rows["query"].append(f"tiny query {k % 2}" if search else "")
            rows["label"].append(int(k % 2 == 0))
    return rows


def _write(
    path: Path, columns: dict[str, list], schema: dict[str, pa.DataType] | None = None
) -> Path:
    schema = schema or {}
    arrays = {name: pa.array(values, schema.get(name)) for name, values in columns.items()}
    pq.write_table(pa.table(arrays), path)
    return path


def _invoke(tmp_path: Path, events: Path, items: Path) -> tuple[int, str, Path]:
    out = tmp_path / "out"
    args = ["prepare", "events", "--events", str(events), "--items", str(items), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--json"])
    return result.exit_code, result.stderr, out


def test_tiny_logs_prepare_and_load(tmp_path: Path) -> None:
    events = _write(tmp_path / "events.parquet", _events())
    items = _write(tmp_path / "items.parquet", _items())
    code, err, out = _invoke(tmp_path, events, items)
    assert code == 0, err
    ds = PreparedDataset.load(out)
    assert (ds.n_users, ds.n_items, ds.n_events) == (N_USERS, N_ITEMS, N_USERS * PER_USER)
    assert ds.queries == ["", "tiny query 0", "tiny query 1"]  # sorted, "" first
    assert ds.user_ids.tolist() == [7, 8, 9]
    assert (ds.test_pos >= 0).all()
    assert ds.meta["positive_rule"].startswith("label == 1")


def test_json_keeps_stdout_for_the_statistics_and_tells_progress_on_stderr(
    tmp_path: Path,
) -> None:
    """The real console script with an empty MiniLM cache (a first run on a machine): stdout is
    the JSON alone; stderr names each long step before it starts, in plain lines (stderr is not
    a terminal here, so no bars), and transformers' "Loading weights" bar stays out of it."""
    events = _write(tmp_path / "events.parquet", _events())
    items = _write(tmp_path / "items.parquet", _items())
    done = subprocess.run(
        [
            *(Path(sys.executable).parent / "seminar", "data", "prepare", "events"),
            *("--events", str(events), "--items", str(items), "--out", str(tmp_path / "out")),
            "--json",
        ],
        env={**os.environ, features.CACHE_ENV: str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["events"] == N_USERS * PER_USER
    lines = done.stderr.splitlines()
    assert lines[0].startswith(f"events: {N_USERS * PER_USER} events of {N_USERS} users")
    assert any(line.startswith(f"item text: embedding {N_ITEMS} texts") for line in lines)
    assert any(line.startswith("queries: embedding 2 texts") for line in lines)
    assert "Loading weights" not in done.stderr and "\r" not in done.stderr


@pytest.mark.slow
def test_events_path_matches_the_movielens_path(movielens_data: Path, tmp_path: Path) -> None:
    # The same canonical tables through `prepare events` give the same arrays, byte for byte.
    events, items = load_tables(MOVIELENS_SOURCE)
    pq.write_table(events, tmp_path / "events.parquet")
    pq.write_table(items, tmp_path / "items.parquet")
    out = tmp_path / "own"
    prepare_events(
        tmp_path / "events.parquet",
        tmp_path / "items.parquet",
        out,
        "own",
        PrepareConfig(progress=False),
    )
    for path in sorted((movielens_data / "arrays").iterdir()):
        assert (out / "arrays" / path.name).read_bytes() == path.read_bytes(), path.name


def _bad_events(**changes: object) -> dict[str, list]:
    columns = _events()
    for name, value in changes.items():
        if value is None:
            del columns[name]
        else:
            columns[name] = value  # type: ignore[assignment]
    return columns


BAD_EVENTS = {
    "missing column": (_bad_events(label=None), {}, "label", "missing column"),
    "mistyped user_id": (
        _bad_events(user_id=[str(u) for u in _events()["user_id"]]),
        {},
        "user_id",
        "must be an integer type",
    ),
    "unknown item": (
        _bad_events(item_id=[*_events()["item_id"][:-1], 999_999]),
        {},
        "item_id",
        "not in the catalog",
    ),
    "label not 0/1": (
        _bad_events(label=[2] * (N_USERS * PER_USER)),
        {},
        "label",
        "is not 0 or 1",
    ),
    "bad event type": (
        _bad_events(event_type=["click"] * (N_USERS * PER_USER)),
        {},
        "event_type",
        "is not 'search' or 'rec'",
    ),
    "search without query": (
        _bad_events(query=[""] * (N_USERS * PER_USER)),
        {},
        "query",
        "is empty on a search event",
    ),
    "non-UTF-8 query": (
        _bad_events(query=[b"\xff\xfe" if t == "search" else b"" for t in _events()["event_type"]]),
        {"query": pa.binary()},
        "query",
        "not valid UTF-8",
    ),
}


@pytest.mark.parametrize("case", list(BAD_EVENTS))
def test_bad_events_exit_2_naming_file_and_column(tmp_path: Path, case: str) -> None:
    columns, schema, column, message = BAD_EVENTS[case]
    events = _write(tmp_path / "my_events.parquet", columns, schema)
    items = _write(tmp_path / "items.parquet", _items())
    _assert_rejected(tmp_path, events, items, "my_events.parquet", column, message)


def _bad_items(**changes: object) -> dict[str, list]:
    columns = _items()
    for name, value in changes.items():
        columns[name] = value  # type: ignore[assignment]
    return columns


BAD_ITEMS = {
    "duplicate ids": (
        _bad_items(item_id=[100, *[100 + i for i in range(N_ITEMS - 1)]]),
        {},
        "item_id",
        "duplicate",
    ),
    "non-UTF-8 text": (
        _bad_items(text=[b"caf\xe9 latin-1", *[b"ok"] * (N_ITEMS - 1)]),
        {"text": pa.binary()},
        "text",
        "not valid UTF-8",
    ),
    "attributes not a list": (
        _bad_items(attributes=["genre=x"] * N_ITEMS),
        {},
        "attributes",
        "must be a list of strings",
    ),
    "mistyped text": (_bad_items(text=list(range(N_ITEMS))), {}, "text", "must be a string type"),
}


@pytest.mark.parametrize("case", list(BAD_ITEMS))
def test_bad_items_exit_2_naming_file_and_column(tmp_path: Path, case: str) -> None:
    columns, schema, column, message = BAD_ITEMS[case]
    events = _write(tmp_path / "events.parquet", _events())
    items = _write(tmp_path / "my_items.parquet", columns, schema)
    _assert_rejected(tmp_path, events, items, "my_items.parquet", column, message)


def test_empty_file_zero_rows_and_not_parquet(tmp_path: Path) -> None:
    items = _write(tmp_path / "items.parquet", _items())
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    _assert_rejected(tmp_path, empty, items, "empty.parquet", None, "is empty")
    no_rows = tmp_path / "no_rows.parquet"
    pq.write_table(pa.table({k: pa.array(v[:0]) for k, v in _events().items()}), no_rows)
    _assert_rejected(tmp_path, no_rows, items, "no_rows.parquet", None, "has no rows")
    text = tmp_path / "events.csv"
    text.write_text("user_id,item_id\n1,2\n")
    _assert_rejected(tmp_path, text, items, "events.csv", None, "not a readable Parquet file")
    _assert_rejected(tmp_path, tmp_path / "nope.parquet", items, "nope.parquet", None, "not found")


def _assert_rejected(
    tmp_path: Path, events: Path, items: Path, file: str, column: str | None, message: str
) -> None:
    code, err, out = _invoke(tmp_path, events, items)
    assert code == 3, err
    line = err.strip()
    assert "\n" not in line and "Traceback" not in line
    assert file in line and message in line
    if column is not None:
        assert f"'{column}'" in line
    assert not out.exists()
    assert not list(tmp_path.glob("out.tmp-*"))


def test_refuses_to_overwrite_a_directory_that_is_not_a_dataset(tmp_path: Path) -> None:
    events = _write(tmp_path / "events.parquet", _events())
    items = _write(tmp_path / "items.parquet", _items())
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    code, err, _ = _invoke(tmp_path, events, items)
    assert code == 5 and "refusing to overwrite" in err
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"


def test_a_failure_midway_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: the feature step dies after the arrays were written into the build dir.
    def crash(*args: object, **kwargs: object) -> np.ndarray:
        raise RuntimeError("disk full")

    monkeypatch.setattr(features, "embed_texts", crash)
    events = _write(tmp_path / "events.parquet", _events())
    items = _write(tmp_path / "items.parquet", _items())
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_events(events, items, tmp_path / "out", "x", PrepareConfig(progress=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.parquet", "items.parquet"]


def test_accepts_narrow_ints_bool_labels_timestamps_and_dictionary_strings(tmp_path: Path) -> None:
    from seminar.data.schema import read_events

    columns = _events()
    table = pa.table(
        {
            "user_id": pa.array(columns["user_id"], pa.int32()),
            "item_id": pa.array(columns["item_id"], pa.uint16()),
            "timestamp": pa.array([t * 1000 for t in columns["timestamp"]], pa.timestamp("ms")),
            "event_type": pa.array(columns["event_type"]).dictionary_encode(),
            "query": pa.array(columns["query"], pa.large_string()),
            "label": pa.array([bool(x) for x in columns["label"]]),
            "extra": pa.array(range(len(columns["label"]))),  # ignored
        }
    )
    pq.write_table(table, tmp_path / "events.parquet")
    events = read_events(tmp_path / "events.parquet")
    assert events.schema.names == [
        "user_id",
        "item_id",
        "timestamp",
        "event_type",
        "query",
        "label",
    ]
    assert events.column("timestamp").to_pylist() == columns["timestamp"]
    assert events.column("label").to_pylist() == columns["label"]
    assert events.column("event_type").to_pylist() == columns["event_type"]
