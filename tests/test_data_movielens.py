"""MovieLens ml-latest-small through the real pipeline: counts, mapping, positive rule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.csv as pcsv
import pytest

from seminar.data.dataset import PreparedDataset
from seminar.data.movielens import decade, item_text
from tests.support.data import MOVIELENS_SOURCE

REPO = Path(__file__).resolve().parents[1]


def test_counts_match_the_source(movielens_data: Path) -> None:
    ds = PreparedDataset.load(movielens_data)
    stats = ds.meta["stats"]
    assert (ds.n_users, ds.n_items) == (610, 9742)
    assert (stats["rec_events"], stats["search_events"]) == (100_836, 3683)
    assert ds.n_events == 100_836 + 3683
    assert ds.meta["synthetic"] is False
    assert ds.item_text_emb.shape == (9744, 384) and ds.query_text_emb.shape == (ds.n_queries, 384)
    assert ds.item_image_emb is None  # MovieLens has no image modality


@pytest.mark.slow
def test_cli_json_reports_the_acceptance_counts(movielens_data: Path, tmp_path: Path) -> None:
    # The real console script, as a user runs it (MiniLM comes from the cache the fixture filled).
    out = tmp_path / "ml"
    result = subprocess.run(
        [
            *(Path(sys.executable).parent / "seminar", "data", "prepare", "movielens"),
            *("--source", str(MOVIELENS_SOURCE), "--out", str(out), "--json"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    stats = json.loads(result.stdout)
    assert stats["users"] == 610 and stats["items"] == 9742
    assert stats["rec_events"] == 100_836 and stats["search_events"] == 3683
    assert stats["events"] == 104_519
    assert 0 < stats["history_p50"] <= stats["history_p90"] <= stats["history_max"]
    assert (out / "meta.json").is_file()
    assert not list(tmp_path.glob("ml.tmp-*"))  # the build dir was renamed, not left behind


def _keys(table, user: str, item: str) -> np.ndarray:
    """(n, 3) rows of (user, item, timestamp)."""
    columns = [table.column(user), table.column(item), table.column("timestamp")]
    return np.stack([c.to_numpy() for c in columns], axis=1)


def test_every_rating_is_a_rec_event_with_the_documented_label(movielens_data: Path) -> None:
    ds = PreparedDataset.load(movielens_data)
    ratings = pcsv.read_csv(MOVIELENS_SOURCE / "ratings.csv")
    events = ds.events_table()
    rec = events.filter(events.column("event_type").to_numpy(zero_copy_only=False) == "rec")
    ours = _keys(rec, "user_id", "item_id")
    theirs = _keys(ratings, "userId", "movieId")
    o, t = np.lexsort(ours.T[::-1]), np.lexsort(theirs.T[::-1])
    assert np.array_equal(ours[o], theirs[t])
    positive = (ratings.column("rating").to_numpy() >= 4.0).astype(np.int8)
    assert np.array_equal(rec.column("label").to_numpy()[o], positive[t])


def test_sequences_are_time_ordered_and_match_the_event_log(movielens_data: Path) -> None:
    ds = PreparedDataset.load(movielens_data)
    events = ds.events_table()
    assert np.array_equal(ds.user_ids[ds.event_user], events.column("user_id").to_numpy())
    assert np.array_equal(ds.item_ids[ds.seq_item - 2], events.column("item_id").to_numpy())
    assert np.array_equal(ds.seq_time, events.column("timestamp").to_numpy())
    same_user = ds.event_user[1:] == ds.event_user[:-1]
    assert (np.diff(ds.seq_time)[same_user] >= 0).all()
    queries = np.array(ds.queries, dtype=object)[ds.seq_query]
    assert (queries == events.column("query").to_numpy(zero_copy_only=False)).all()
    assert (
        (ds.seq_query > 0)
        == (events.column("event_type").to_numpy(zero_copy_only=False) == "search")
    ).all()


def test_items_text_and_attributes(movielens_data: Path) -> None:
    ds = PreparedDataset.load(movielens_data)
    toy = ds.items_table().to_pylist()[ds.item_index(1) - 2]
    assert toy["text"] == "Toy Story (1995) | Adventure, Animation, Children, Comedy, Fantasy"
    assert "genre=Comedy" in toy["attributes"] and "decade=1990s" in toy["attributes"]
    row = [ds.attributes[a] for a in ds.item_attrs[ds.item_index(1)] if a]
    assert row == toy["attributes"]
    assert ds.attributes[0] == "<pad>" and ds.attributes[1:] == sorted(ds.attributes[1:])
    assert "decade=unknown" in ds.attributes  # 13 titles carry no year
    assert ds.item_index(-5) == 1  # unknown id -> OOV


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Toy Story (1995)", "1990s"),
        ("Death Note: Desu nôto (2006–2007)", "2000s"),
        ("Some Show (2007-)", "2000s"),
        ("Babylon 5", "unknown"),
        ("2001: A Space Odyssey (1968) ", "1960s"),
    ],
)
def test_decade_from_title(title: str, expected: str) -> None:
    assert decade(title) == expected


def test_item_text_without_genres_is_the_title() -> None:
    assert item_text("Babylon 5", []) == "Babylon 5"


def test_cli_names_a_missing_source_file(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from seminar.data.cli import app

    source = tmp_path / "ml"
    source.mkdir()
    (source / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,5\n")
    out = tmp_path / "out"
    args = ["prepare", "movielens", "--source", str(source), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 3
    assert "tags.csv: file not found" in result.stderr
    assert not out.exists()


def test_cli_names_a_malformed_ratings_column(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from seminar.data.cli import app

    source = tmp_path / "ml"
    source.mkdir()
    for name in ("tags.csv", "movies.csv"):
        (source / name).write_bytes((MOVIELENS_SOURCE / name).read_bytes())
    (source / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,four,5\n")
    result = CliRunner().invoke(
        app, ["prepare", "movielens", "--source", str(source), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 3
    assert "ratings.csv" in result.stderr and "rating" in result.stderr
