"""Evaluation that separates search from recommendation, in bounded memory.

- Scoring chunks are bounded by the bytes they allocate: 8,000 SYNTHETIC users with 3-10 events
  each, which the old rows x candidates x heads x L rule put in one chunk asking for tens of GB,
  evaluate (and `seminar bench quality` trains and evaluates) under 4 GB of peak RSS.
- The search split (each user's last positive search event) and the query ablation on real
  MovieLens data, and the bench's tables and sentences by target.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seminar.data.dataset import PreparedDataset
from seminar.training.batches import (
    EVAL_SPLITS,
    eval_lists,
    is_training_target,
    search_lists,
    target_is_search,
)
from seminar.training.evaluate import SCORE_MEMORY_BYTES, ScoreShape, score_chunks
from tests.support.data import SYNTHETIC_SMALL

# The reported case: 8,000 users with 3-10 events each (median 6), over the small synthetic
# catalog (its item texts are already embedded for the session's fixture).
SHORT_HISTORIES = {**SYNTHETIC_SMALL, "users": 8000, "events_per_user": 6}
SHORT_BOUNDS = {"min_events": 3, "max_events": 10}
PEAK_RSS_LIMIT_MIB = 4096
# The default model (H = 4, K = 50, D = 64) on 1 + 99 candidates.
DEFAULT_SHAPE = ScoreShape(candidates=100, heads=4, top_k=50, dim=64)
OLD_RULE_BUDGET = 24_000_000  # rows x candidates x heads x L per chunk, before this bound


@pytest.fixture(scope="module")
def short_history_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from seminar.data.prepare import PrepareConfig
    from seminar.data.synthetic import SyntheticConfig, prepare_synthetic

    out = tmp_path_factory.mktemp("data") / "short"
    config = SyntheticConfig(**SHORT_HISTORIES, **SHORT_BOUNDS)
    prepare_synthetic(config, out, PrepareConfig(seed=config.seed, progress=False))
    return out


def _test_lengths(ds: PreparedDataset) -> np.ndarray:
    users, positions, _ = eval_lists(ds, "test")
    return np.sort(positions - np.asarray(ds.seq_offsets)[users])


def test_short_histories_are_what_was_asked_for(short_history_data: Path) -> None:
    ds = PreparedDataset.load(short_history_data)
    events = np.diff(ds.seq_offsets)
    assert ds.n_users == 8000 and events.min() == 3 and events.max() == 10
    assert np.median(events) == pytest.approx(6, abs=1)
    assert len(_test_lengths(ds)) > 4000  # users with >= 3 positives are evaluated


def test_chunks_stay_in_budget_where_the_old_rule_asked_for_tens_of_gb(
    short_history_data: Path,
) -> None:
    lengths = _test_lengths(PreparedDataset.load(short_history_data))
    per_row = DEFAULT_SHAPE.candidates * DEFAULT_SHAPE.heads
    # The old rule grew a chunk while rows x C x H x longest L stayed under 24M elements, but
    # the top-K gather holds K slots whatever L is: (rows*C, H, K, D) float32.
    old_rows = int(
        np.searchsorted(np.arange(1, len(lengths) + 1) * per_row * lengths, 24e6, "right")
    )
    old_gather = old_rows * per_row * DEFAULT_SHAPE.top_k * DEFAULT_SHAPE.dim * 4
    assert old_gather > 20e9, old_gather
    chunks = score_chunks(lengths, DEFAULT_SHAPE)
    assert [c.start for c in chunks] == [0, *(c.stop for c in chunks[:-1])]
    assert chunks[-1].stop == len(lengths)
    for chunk in chunks:
        rows = chunk.stop - chunk.start
        gather = rows * per_row * DEFAULT_SHAPE.top_k * DEFAULT_SHAPE.dim * 4
        assert gather <= rows * DEFAULT_SHAPE.bytes_per_row(int(lengths[chunk.stop - 1]))
        assert (
            rows * DEFAULT_SHAPE.bytes_per_row(int(lengths[chunk.stop - 1])) <= SCORE_MEMORY_BYTES
        )
    # ... and a long history is a chunk of its own rather than none.
    assert score_chunks(np.array([10**7]), DEFAULT_SHAPE) == [slice(0, 1)]


@pytest.mark.slow
def test_quality_bench_on_8000_short_histories_peaks_under_4_gb(
    short_history_data: Path, tmp_path: Path
) -> None:
    """`seminar bench quality` trains and evaluates in one process: its peak RSS, read by a
    parent that has no other child, is under 4 GB (the old chunks asked for 4.6 GB here at
    --quick, 23 GB at the default configuration)."""
    out = tmp_path / "reports"
    measure = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.stderr.write(done.stderr[-3000:])\n"
    )
    command = [sys.executable, "-m", "seminar.cli", "bench", "quality", "--quick", "--only",
               "seminar", "--seeds", "1", "--threads", "1", "--data", str(short_history_data),
               "--runs", str(tmp_path / "runs"), "--reports", str(out)]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", measure, *command], capture_output=True, text=True, timeout=900
    )
    code, peak_kib = map(int, done.stdout.split())
    assert code == 0, done.stderr
    assert peak_kib / 1024 < PEAK_RSS_LIMIT_MIB, peak_kib
    report = json.loads((out / "quality.json").read_text())
    assert 0 < report["bench"]["peak_rss_mib"] <= peak_kib / 1024 + 1
    assert "peak RSS of the bench process" in (out / "quality.md").read_text()
    targets = report["targets"]
    assert targets["users"]["test-search"] + targets["users"]["test-rec"] > 4000
    assert targets["users"]["search"] > 3000  # most users searched at least once
    assert set(targets["seminar"]) == {"test-search", "test-rec", "search", "search-no-query"}
    assert 0 < targets["users"]["search-trained"] < targets["users"]["search"]


def test_search_split_is_each_users_last_positive_search(movielens_data: Path) -> None:
    ds = PreparedDataset.load(movielens_data)
    assert "search" in EVAL_SPLITS
    users, positions, candidates = search_lists(ds)
    query, label = np.asarray(ds.seq_query), np.asarray(ds.seq_label)
    searched = np.unique(ds.event_user[(query > 0) & (label == 1)])
    # Every MovieLens user who tagged is evaluated (the catalog leaves 99 untouched items),
    # many more than the test split's search targets.
    assert np.array_equal(users, searched) and len(users) > 50
    _, test_positions, _ = eval_lists(ds, "test")
    assert target_is_search(ds, test_positions).sum() < len(users) / 3
    assert target_is_search(ds, positions).all() and (label[positions] == 1).all()
    offsets = np.asarray(ds.seq_offsets)
    for user, position in zip(users, positions, strict=True):
        later = np.arange(position + 1, offsets[user + 1])
        assert not ((query[later] > 0) & (label[later] == 1)).any()  # the last one
    # A search target the trainer never learns from is a test or validation target.
    held_out = np.isin(positions, np.concatenate([ds.test_pos, ds.valid_pos]))
    assert np.array_equal(~is_training_target(ds, positions), held_out)
    assert candidates.shape == (len(users), 1 + ds.test_negatives.shape[1])
    assert np.array_equal(candidates[:, 0], np.asarray(ds.seq_item)[positions])
    for row, user in enumerate(users):
        negatives = candidates[row, 1:]
        touched = np.asarray(ds.seq_item)[offsets[user] : offsets[user + 1]]
        assert len(np.unique(negatives)) == len(negatives)
        assert not np.isin(negatives, touched).any() and (negatives >= 2).all()
    # Seeded: the same lists again, and apart from the test split's own negatives.
    again = search_lists(ds)
    assert all(
        np.array_equal(a, b) for a, b in zip(again, (users, positions, candidates), strict=True)
    )
    first = search_lists(ds, max_users=5)
    assert np.array_equal(first[2], candidates[:5])


def test_evaluate_by_target_and_the_query_ablation(quick_run: Path, movielens_data: Path) -> None:
    from seminar.training.checkpoint import load_run
    from seminar.training.evaluate import evaluate_by_target, score_split
    from seminar.training.metrics import ranking_metrics

    model = load_run(quick_run).model
    ds = PreparedDataset.load(movielens_data)
    test = evaluate_by_target(model, ds, "test")
    assert test.users["all"] == test.users["search"] + test.users["rec"] > 0
    scores, users = score_split(model, ds, "test")
    search = target_is_search(ds, np.asarray(ds.test_pos)[users])
    assert test.metrics["search"] == pytest.approx(ranking_metrics(scores[search]))
    assert test.metrics["rec"] == pytest.approx(ranking_metrics(scores[~search]))
    assert test.metrics["all"] == pytest.approx(ranking_metrics(scores))

    with_query, _ = score_split(model, ds, "search")
    without, _ = score_split(model, ds, "search", without_query=True)
    assert with_query.shape == without.shape and not np.allclose(with_query, without)
    # Removing the query is what a rec target already is: its scores do not move.
    rec_only, _ = score_split(model, ds, "test", without_query=True)
    assert np.allclose(rec_only[~search], scores[~search], atol=1e-5)


def test_evaluate_cli_search_split_and_no_query(quick_run: Path, movielens_data: Path) -> None:
    from typer.testing import CliRunner

    from seminar.cli import app

    def evaluate(*args: str) -> dict:
        result = CliRunner().invoke(
            app,
            ["evaluate", "--run", str(quick_run), "--data", str(movielens_data), "--json", *args],
        )
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    search = evaluate("--split", "search", "--by-target")
    assert search["users"]["all"] == search["users"]["search"] > 50 and search["users"]["rec"] == 0
    assert "rec" not in search and search["all"] == search["search"]
    without = evaluate("--split", "search", "--no-query")
    assert set(without) == set(search["all"]) and without != search["all"]
    help_text = CliRunner().invoke(app, ["evaluate", "--help"]).output
    assert "--no-query" in help_text and "search" in help_text


def test_quality_report_tables_and_the_query_sentence(tmp_path: Path) -> None:
    from seminar.bench.quality import QualityBench, QualityConfig, Targets
    from tests.test_bench_reports import fixed_header, metric_rows

    data = tmp_path / "data"
    data.mkdir()
    (data / "meta.json").write_text(json.dumps({"name": "shop", "negatives": 99}))
    bench = QualityBench(
        QualityConfig(data=data, reports=tmp_path / "out", only=("seminar", "din"))
    )

    def groups(search: list[float], no_query: list[float]) -> dict:
        flat = {"ndcg@10": [0.3, 0.31], "hit@10": [0.5, 0.5], "mrr": [0.2, 0.2]}
        return {
            "test-search": flat,
            "test-rec": flat,
            "search": {**flat, "ndcg@10": search},
            "search-no-query": {**flat, "ndcg@10": no_query},
        }

    targets = Targets(
        {"seminar": groups([0.60, 0.62], [0.40, 0.41]), "din": groups([0.40, 0.42], [0.41, 0.40])},
        {
            "test-search": 12,
            "test-rec": 596,
            "search": 58,
            "search-no-query": 58,
            "search-trained": 44,
        },
    )
    results = {"seminar": metric_rows(0.3), "din": metric_rows(0.29)}
    bench.write(fixed_header(), results, seconds=60.0, targets=targets)
    markdown = (tmp_path / "out" / "quality.md").read_text()
    assert "12 users whose target is a search" in markdown and "596 whose target" in markdown
    assert "each of the 58 users who searched" in markdown and "1 + 99 candidates" in markdown
    assert "| seminar | 0.3050 ± 0.0071 | 0.5000 ± 0.0000 |" in markdown
    assert "44 of these targets precede their user's validation target" in markdown
    assert "+0.2050 ± 0.0071" in markdown  # the per-seed gain column
    assert "seminar: search-split ndcg@10 0.6100 ± 0.0141 with the query" in markdown
    assert "the query raises the ranking by more than 2 std" in markdown
    assert "din: search-split" in markdown and "does not change the ranking" in markdown
    saved = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert saved["targets"]["users"]["search"] == 58
    assert saved["targets"]["seminar"]["search"]["ndcg@10"]["mean"] == pytest.approx(0.61)
    assert saved["bench"]["peak_rss_mib"] == pytest.approx(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rel=0.5
    )
