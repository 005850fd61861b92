"""Every report renderer, fed two synthetic result sets: its sentences follow the numbers.

No benchmark runs here: each renderer takes the numbers a run would have measured, and a
conclusion that stayed put when the numbers moved would fail.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from seminar.bench import native, online, perf, serving, soak, synthetic
from seminar.bench.harness import Header, Machine, Record, Timing, write_plotted
from seminar.bench.pq import breakdown, distributions, latency, trained_run
from seminar.bench.pq.config import EXACT, EXACT_FAISS, FAISS_FASTSCAN, FAST, SERVED
from seminar.bench.quality import MODELS, QualityBench, QualityConfig, findings

# -- PQ: latency table ---------------------------------------------------------------------------


def spread(mean: float, std: float) -> Timing:
    """Ten timings, alternately mean - h and mean + h: sample std h * sqrt(10 / 9) = std."""
    half = std * 0.9**0.5
    return Timing(tuple(mean + (half if i % 2 else -half) for i in range(10)))


def latency_rows(served_ms: float, served_std: float, length: int = 10_000) -> list[latency.Row]:
    def row(method: str, ms: float, std: float = 0.2, recall: float = 0.9) -> latency.Row:
        return latency.Row(method, length, spread(ms, std), recall, 32.0)

    return [
        row(EXACT, 10.0, recall=1.0),
        row(EXACT_FAISS, 12.0, recall=1.0),
        row(FAST, 4.0, recall=0.6),
        row(SERVED, served_ms, served_std, recall=0.93),
        row(FAISS_FASTSCAN, 3.0, recall=0.6),
    ]


def test_pq_latency_sentences_follow_the_ratio() -> None:
    fast = "\n".join(latency.findings(latency_rows(4.5, 0.2)))
    assert "the served PQ GSU is 2.22× faster than the exact GSU" in fast
    assert "Fastest: faiss IndexPQFastScan search only (4-bit), 0.30×" in fast
    slow = "\n".join(latency.findings(latency_rows(25.0, 0.2)))
    assert "the exact GSU is 2.50× faster than the served PQ GSU" in slow
    noisy = "\n".join(latency.findings(latency_rows(11.0, 2.0)))
    assert "within noise" in noisy
    assert "within noise" not in fast + slow


def test_pq_goal_is_met_or_missed_by_the_measured_ratio() -> None:
    assert "met** (0.45×)" in latency.goal(latency_rows(4.5, 0.2), 10_000)
    assert "missed** (0.80×)" in latency.goal(latency_rows(8.0, 0.2), 10_000)
    assert latency.goal(latency_rows(8.0, 0.2), 1_000) is None


def test_pq_trend_over_lengths_follows_the_ratios() -> None:
    falling = latency_rows(20.0, 0.2, 1_000) + latency_rows(4.0, 0.2, 100_000)
    assert "lower at the longest L" in "\n".join(latency.findings(falling))
    rising = latency_rows(4.0, 0.2, 1_000) + latency_rows(20.0, 0.2, 100_000)
    assert "not lower at the longest L" in "\n".join(latency.findings(rising))
    assert "| 1,000 |" in latency.table(falling)


# -- PQ: breakdown, distributions, trained run ---------------------------------------------------


def breakdown_result(scan: float, collect: float, bandwidth: float) -> dict[str, Any]:
    return {
        "length": 10_000,
        "shortlist": 200,
        "exact_ms": {"fetch": 0.1, "gemm": 4.0, "topk": 5.0, "gather": 0.1},
        "pq_ms": {"scan": scan, "collect": collect, "rerank": 1.0, "gather": 0.3},
        "exact_total_ms": 9.2,
        "pq_total_ms": scan + collect + 1.3,
        "rates": {
            "copy_bandwidth_gb_s": bandwidth,
            "gemm_gflop_s": 100.0,
            "fastscan_glookups_s": 120.0,
        },
        "work": {
            "dim": 64,
            "lookups_per_score": 64,
            "exact_bytes_fetched": 5_120_000,
            "exact_flops": 512_000_000,
            "pq_code_bytes": 320_000,
            "pq_lookups": 256_000_000,
        },
        "pq_floor_ms": scan + 1.3,
    }


def test_pq_breakdown_sentences_follow_the_steps_and_rates() -> None:
    fast_memory = "\n".join(breakdown.markdown(breakdown_result(2.0, 4.0, 20.0)))
    assert "The largest PQ step is collect: 4.00 ms" in fast_memory
    assert "(compute-bound) and PQ's" in fast_memory
    assert "= 0.36× the exact steps' sum, within the 0.50× goal" in fast_memory
    slow_memory = "\n".join(breakdown.markdown(breakdown_result(5.0, 1.0, 0.5)))
    assert "The largest PQ step is scan: 5.00 ms" in slow_memory
    assert "10.24 ms of its 9.20 ms (memory-bound)" in slow_memory
    assert "above the 0.50× goal" in slow_memory
    # the goal's budget (0.5 x 9.2 ms) against the PQ steps, and the scan's share of it
    assert (
        "Budget: the goal allows the PQ steps 4.60 ms and they took 7.30 ms, 2.70 ms over; "
        "the scan alone is 2.00 ms (43% of the budget)" in fast_memory
    )
    within = "\n".join(breakdown.markdown(breakdown_result(1.0, 0.5, 20.0)))
    assert "Budget: the goal allows the PQ steps 4.60 ms and they took 2.80 ms." in within


def test_pq_distribution_sentences_name_the_best_tables() -> None:
    first = distributions.markdown(
        {"trained tables": {"a": 0.9, "b": 0.7}, "random isotropic": {"a": 0.5, "b": 0.8}}
    )
    text = "\n".join(first)
    assert "- a: highest on trained tables (0.900), lowest on random isotropic" in text
    assert "random isotropic: b (0.800)" in text
    second = distributions.markdown(
        {"trained tables": {"a": 0.4, "b": 0.7}, "random isotropic": {"a": 0.5, "b": 0.6}}
    )
    assert "- a: highest on random isotropic (0.500)" in "\n".join(second)


def trained_result(served_change: float, fast_change: float) -> dict[str, Any]:
    def result(change: float) -> dict[str, Any]:
        return {
            "recall_at_50": 0.99,
            "metrics": {"ndcg@10": 0.5 * (1 + change)},
            "ndcg10_relative_change": change,
        }

    return {
        "run": "runs/x",
        "dataset": "shop-catalogue",
        "exact": {"ndcg@10": 0.5},
        "pq": {SERVED: result(served_change), FAST: result(fast_change)},
    }


def test_pq_trained_run_sentences_follow_the_ndcg_change() -> None:
    lower = "\n".join(trained_run.markdown(trained_result(-0.01, -0.002)))
    assert lower.startswith("shop-catalogue (trained run runs/x)")
    assert "by -1.00% (lower than" in lower
    assert f"Largest change: {SERVED}, -1.00%" in lower
    higher = "\n".join(trained_run.markdown(trained_result(0.001, -0.03)))
    assert "by +0.10% (not lower than" in higher
    assert f"Largest change: {FAST}, -3.00%" in higher
    assert "MovieLens" not in lower + higher


# -- quality -------------------------------------------------------------------------------------


def quality_report(seminar: tuple[float, float], din: tuple[float, float], n: int = 3) -> dict:
    def row(mean: float, std: float) -> dict:
        return {"ndcg@10": {"mean": mean, "std": std, "n": n}}

    return {"seminar": row(*seminar), "din": row(*din), "seminar-no-text": row(0.40, 0.001)}


def test_quality_sentences_name_the_leader_and_the_noise() -> None:
    models, ablations = ["seminar", "din"], ["seminar-no-text"]
    clear = "\n".join(findings(quality_report((0.50, 0.002), (0.45, 0.002)), models, ablations))
    assert "Highest mean ndcg@10: seminar." in clear
    assert "seminar is 1.11× higher on ndcg@10 than din" in clear
    assert "seminar is 1.25× higher on ndcg@10 than seminar-no-text" in clear
    flipped = "\n".join(findings(quality_report((0.45, 0.002), (0.50, 0.002)), models, ablations))
    assert "Highest mean ndcg@10: din." in flipped
    assert "din is 1.11× higher on ndcg@10 than seminar" in flipped
    noisy = "\n".join(findings(quality_report((0.474, 0.006), (0.476, 0.005)), models, ablations))
    assert "din and seminar are within noise" in noisy
    assert "within noise" not in clear + flipped
    single = "\n".join(findings(quality_report((0.5, 0.0), (0.4, 0.0), n=1), models, []))
    assert "not resolved" in single


def fixed_header() -> Header:
    machine = Machine("Test CPU", 2, None, "3.11.7", 1, 0.5)
    return Header("seminar bench quality", (0, 1), machine, "abc123", "2025-01-01T00:00:00+00:00")


def metric_rows(ndcg: float) -> dict[str, list[float]]:
    from seminar.training.metrics import METRIC_NAMES

    row = {metric: [ndcg, ndcg + 0.001] for metric in METRIC_NAMES}
    return row | {"seconds": [10.0, 11.0], "samples_per_s": [100.0, 110.0]}


def test_quality_report_names_the_dataset_from_meta_json(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "meta.json").write_text(json.dumps({"name": "shop-catalogue", "negatives": 49}))
    bench = QualityBench(QualityConfig(data=data, reports=tmp_path / "out", only=("seminar",)))
    bench.write(fixed_header(), {"seminar": metric_rows(0.3)}, seconds=60.0)
    markdown = (tmp_path / "out" / "quality.md").read_text()
    assert markdown.startswith(
        "# Quality: SEMINAR vs baselines on shop-catalogue (1 + 49 candidates, test split)"
    )
    assert "MovieLens" not in markdown
    saved = json.loads((tmp_path / "out" / "quality.json").read_text())
    assert saved["seminar"]["ndcg@10"]["n"] == 2  # the build's model card reads this row
    assert saved["bench"]["dataset"] == "shop-catalogue"
    assert saved["header"]["seeds"] == [0, 1]


def test_quality_defaults_skip_ablations_and_keep_reports_apart(tmp_path: Path) -> None:
    config = QualityConfig(data=tmp_path)
    assert [v.name for v in config.variants()] == [v.name for v in MODELS]
    assert config.reports == Path("runs/bench")
    assert len(QualityConfig(data=tmp_path, ablations=True).variants()) == 11


def test_quality_progress_names_each_run_and_reuses_finished_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = QualityConfig(
        data=tmp_path, runs=tmp_path / "runs", reports=tmp_path / "out", seeds=2,
        only=("seminar", "din"), threads=1,
    )  # fmt: skip
    bench = QualityBench(config)
    summary = {
        "test": {metric: values[0] for metric, values in metric_rows(0.3).items()},
        "seconds": {"total": 1.0},
        "samples_per_s": {"finetune": 1.0},
    }
    trained: list[tuple[str, int]] = []

    def fake_train(data, out, kind, train, model):  # type: ignore[no-untyped-def]
        assert train.threads == 1 and train.progress
        trained.append((kind, train.seed))
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(summary))
        return summary

    evaluated: list[Path] = []

    def fake_targets(run, data):  # type: ignore[no-untyped-def]
        evaluated.append(run)
        metrics = {metric: 0.3 for metric in ("ndcg@10", "hit@10", "mrr")}
        return {"metrics": {"search": metrics, "search-no-query": metrics}, "users": {}}

    monkeypatch.setattr("seminar.training.trainer.train_run", fake_train)
    monkeypatch.setattr("seminar.bench.quality.evaluate_targets", fake_targets)
    monkeypatch.setattr("seminar.bench.quality.Header.now", lambda seeds: fixed_header())
    lines: list[str] = []
    bench.run(echo=lines.append)
    assert lines[0].startswith("[1/4, ") and "seminar seed 0" in lines[0]
    assert sum(line.startswith("[") for line in lines) == 4
    assert len(trained) == 4
    assert len(evaluated) == 4  # every run's search and rec figures, once
    # a second bench with other threads reuses every finished run and its figures
    again = QualityBench(QualityConfig(**{**config.__dict__, "threads": 2}))
    lines.clear()
    again.run(echo=lines.append)
    assert len(trained) == 4 and len(evaluated) == 4
    assert sum("reused" in line for line in lines) == 4


# -- serving -------------------------------------------------------------------------------------


def serving_cell(ms: float, std: float = 0.2) -> dict[str, float]:
    return {"p50_ms": ms, "p90_ms": ms + 1, "p99_ms": ms + 2, "mean_ms": ms, "std_ms": std,
            "requests": 200, "throughput_rps": 1000 / ms}  # fmt: skip


def serving_report(ensemble_ms: float, in_process_ms: float, std: float = 0.2) -> dict[str, Any]:
    phases = {"queue": 0.2, "compute_input": 0.02, "compute_infer": 1.0, "compute_output": 0.1}
    row = {
        "source": "shop-catalogue",
        "user_id": 7,
        "length": 10_000,
        "max_abs_diff": 0.0,
        "floor": serving_cell(2.0),
        "ensemble": serving_cell(ensemble_ms, std),
        "ensemble_c4": serving_cell(ensemble_ms * 2),
        "in_process": serving_cell(in_process_ms, std),
        "breakdown": {"features": phases, "pq_retrieval": phases | {"compute_infer": 5.0}},
    }
    config = {"candidates": 100, "requests": 200, "warmup": 20, "concurrency": 4, "seed": 0}
    return {"config": config, "dataset": "shop-catalogue", "model_threads": 1, "rows": [row]}


def test_serving_sentences_follow_the_latencies() -> None:
    slow = serving.markdown(serving_report(20.0, 10.0))
    assert "in-process is 2.00× faster than the six steps" in slow
    assert "2.00× (missed" in slow
    assert "the largest compute is pq_retrieval's, 5.00 ms" in slow
    close = serving.markdown(serving_report(12.0, 10.0))
    assert "1.20× (met)" in close
    noisy = serving.markdown(serving_report(10.5, 10.0, std=1.0))
    assert "the six steps and in-process are within noise" in noisy
    assert "within noise" not in slow + close
    assert "10,000 (shop-catalogue)" in slow
    assert "MovieLens" not in "\n".join(serving.setup_lines(serving_report(1.0, 1.0)))


def test_serving_report_says_what_the_query_costs() -> None:
    report = serving_report(10.0, 8.0)
    report["config"]["search_query"] = "a film about robots in love"
    row = report["rows"][0]
    row["ensemble_search"] = serving_cell(13.5)
    row["max_abs_diff_search"] = 2e-6
    row["breakdown"]["query_text"] = {"queue": 0.1, "compute_input": 0.01,
                                      "compute_infer": 1.7, "compute_output": 0.01}  # fmt: skip
    text = serving.markdown(report)
    assert "| ensemble, six steps, sequential, with a query | 13.50 |" in text
    assert (
        "a search request (query 'a film about robots in love') takes 13.50 ms p50 against "
        "10.00 ms without a query: +3.50 ms for the query's MiniLM embedding (query_text); "
        "query_text's compute averaged over both kinds of request is 1.70 ms."
    ) in text
    assert "max |diff| per row: six steps: 0.0e+00; six steps with the query: 2.0e-06." in text
    assert "with a query" not in serving.markdown(serving_report(10.0, 8.0))


def test_serving_report_compares_the_fused_graph_and_counts_ipc_bytes() -> None:
    def with_fused(fused_ms: float) -> dict[str, Any]:
        report = serving_report(14.0, 7.0)
        row = report["rows"][0]
        row["fused"] = serving_cell(fused_ms)
        row["fused_c4"] = serving_cell(fused_ms * 1.5)
        row["max_abs_diff_fused"] = 1e-7
        row["breakdown"]["pipeline"] = {"queue": 0.1, "compute_input": 0.01,
                                        "compute_infer": 7.5, "compute_output": 0.02}  # fmt: skip
        report["ipc_bytes"] = {"features": 2_000, "pq_retrieval": 1_000_000, "pipeline": 2_100}
        report["ipc_bytes_search"] = {"features": 5_000, "pq_retrieval": 1_000_000,
                                      "pipeline": 5_100}  # fmt: skip
        return report

    fast = serving.markdown(with_fused(8.4))
    assert "the fused graph is 1.67× faster than the six steps" in fast
    assert "1.20× (met)" in fast and "fused graph's p50 <= 1.3×" in fast
    assert "| six steps | **sum** | **1,002,000** | **1,005,000** |" in fast
    assert "the fused graph moves 2,100 (0.2% of that)" in fast
    assert "(pq_retrieval alone 1,000,000)" in fast
    assert "fused: 1.0e-07" in fast
    assert "0.40 ms is queueing in the 2 steps' dynamic batchers" in fast  # not the fused step
    assert "0.10 ms is queueing in its one batcher and 7.50 ms is the pipeline step's" in fast
    slow = serving.markdown(with_fused(10.5))
    assert "1.50× (missed)" in slow


# -- soak ----------------------------------------------------------------------------------------


def soak_report(passed: bool, stopped_ms: tuple[float, ...], recovered_s: float | None) -> dict:
    config = {"duration_s": 60.0, "concurrency": 8, "deadline_min_s": 0.005,
              "deadline_max_s": 2.0, "big_share": 0.3, "big_candidates": 1000,
              "huge_query_share": 0.05, "cancel_share": 0.05, "stall_every_s": 20.0,
              "stall_s": 3.0, "kill_at_end": True, "seed": 0}  # fmt: skip
    return {
        "config": config,
        "arms": ["seminar_v1:1"],
        "passed": passed,
        "tritonserver_survived": passed,
        "codes": {"OK": 90, "DEADLINE_EXCEEDED": 10} if passed else {"OK": 90, "INTERNAL": 10},
        "improper_codes": {} if passed else {"INTERNAL": 10},
        "examples": {},
        "ok_p50_ms": 12.0,
        "ok_p99_ms": 80.0,
        "calls": 100,
        "stalls": [
            {"at_s": 20.0 * (i + 1), "pid": 1, "model": "m", "version": "1", "stopped_ms": ms}
            for i, ms in enumerate(stopped_ms)
        ],
        "kill": {
            "at_s": 60.0,
            "old_pid": 1,
            "new_pid": 2,
            "recovered_s": recovered_s,
            "leftover_processes": [],
            "leftover_shm": [],
            "codes": {"UNAVAILABLE": 3},
        },
        "supervisor": {"resumed": 1.0, "abandoned": 4.0, "restarts": 1.0},
        "timeline": {},
    }


def test_soak_sentences_follow_the_run() -> None:
    held = soak.markdown(soak_report(True, (450.0, 3000.0), 4.2))
    assert held.startswith("**PASSED.** tritonserver never died")
    assert "1 of 2 frozen processes were running again before the bench's own SIGCONT" in held
    assert "answered OK again 4.2 s after the kill" in held
    broke = soak.markdown(soak_report(False, (3000.0, 3000.0), None))
    assert broke.startswith("**FAILED.** tritonserver DIED")
    assert "improper codes: {'INTERNAL': 10}" in broke
    assert "0 of 2 frozen processes" in broke
    assert "did NOT answer OK again within 600 s" in broke


# -- online --------------------------------------------------------------------------------------


def latency_summary(mean_ms: float, std_ms: float = 0.1, requests: int = 100) -> dict:
    return {
        "mean_ms": mean_ms, "std_ms": std_ms, "p50_ms": mean_ms, "p90_ms": mean_ms * 1.5,
        "p99_ms": mean_ms * 2, "requests": requests, "throughput_rps": 1000 / mean_ms,
    }  # fmt: skip


def online_report(
    ack_ms: tuple[float, float],
    events_per_s: tuple[float, float],
    lost: int,
    tail_ms: tuple[float, float, float],
    score_change: tuple[float, float, float],
) -> dict[str, Any]:
    """A run's numbers: (SQLite, Redis) Record rows and Rank at tails 0, 100, 1,000."""
    record = [
        {
            "log": kind,
            "events_per_s": rate,
            "wall_s": 20.5,
            "acknowledgement": latency_summary(ms, requests=2000),
            "sent": 4000,
            "acknowledged": 4000,
            "stored": 4000 - lost,
            "lost": lost,
            "failures": {},
        }
        for kind, ms, rate in zip(("sqlite", "redis"), ack_ms, events_per_s, strict=True)
    ]
    tails = [
        {"tail": tail, "rank": latency_summary(ms, std_ms=0.5), "max_score_change": change}
        for tail, ms, change in zip((0, 100, 1000), tail_ms, score_change, strict=True)
    ]
    config = asdict(online.OnlineBenchConfig())
    return {
        "config": config, "dataset": "shop-catalogue", "repo": "work/model_repository",
        "user_id": 611, "record": record, "rank_tails": tails,
    }  # fmt: skip


def test_online_sentences_follow_the_numbers(tmp_path: Path) -> None:
    sqlite_wins = online.markdown(
        online_report((2.0, 4.0), (4000, 2000), 0, (10.0, 12.0, 20.0), (0.0, 0.01, 0.05))
    )
    assert "SQLite is 2.00× faster to acknowledge than Redis (2.00 ± 0.10 vs 4.00 ± 0.10" in (
        sqlite_wins
    )
    assert "SQLite's throughput is 2.00× Redis's" in sqlite_wins
    assert "missing from the log: 0 (none lost)" in sqlite_wins
    assert "the empty tail is 2.00× faster than the 1,000-event tail" in sqlite_wins
    assert "the scores moved (largest change 5.0e-02)" in sqlite_wins
    assert "| 1,000 | 20.00 | 40.00 | 2.00× | 5.0e-02 |" in sqlite_wins
    redis_wins = online.markdown(
        online_report((6.0, 3.0), (1000, 4000), 3, (10.0, 10.2, 10.4), (0.0, 0.0, 0.0))
    )
    assert "Redis is 2.00× faster to acknowledge than SQLite" in redis_wins
    assert "SQLite's throughput is 0.25× Redis's" in redis_wins
    assert "missing from the log: 6 (EVENTS LOST)" in redis_wins
    assert "the 1,000-event tail and the empty tail are within noise" in redis_wins
    assert "the scores did not move" in redis_wins
    assert "within noise" not in sqlite_wins
    assert "SYNTHETIC user 611 with L = 10,000" in "\n".join(
        online.setup_lines(online_report((1, 1), (1, 1), 0, (1, 1, 1), (0, 0, 0)))
    )
    report = online_report((2, 4), (4, 2), 0, (1, 2, 3), (0, 1, 1))
    record = Record("Online", fixed_header(), online.setup_lines(report), "body", report)
    paths = write_plotted(record, tmp_path / "online", online.plot)
    assert [p.name for p in paths] == ["online.md", "online.json", "online.png"]
    assert paths[2].stat().st_size > 0


# -- synthetic -----------------------------------------------------------------------------------


def synthetic_rows(large_rss: float) -> list[synthetic.BenchRow]:
    return [
        synthetic.BenchRow(synthetic.ANCHOR, 0, 0, 0.0, 0.0, 80.0, 0.0),
        synthetic.BenchRow("100,000 events", 100_000, 100, 2.0, 50_000, 170.0, 6.0),
        synthetic.BenchRow("4,000,000 events", 4_000_000, 4000, 10.0, 400_000, large_rss, 100.0),
    ]


def test_synthetic_sentences_follow_the_memory_growth() -> None:
    bounded = synthetic.markdown(synthetic_rows(200.0), chunk_rows=262_144)
    assert "(40.0× the events), throughput went from 50,000 to 400,000 events/s (8.00×)" in bounded
    assert "+90 to +120 MiB (1.33×): less than the events grew" in bounded
    assert "over a 262,144-event write chunk" in bounded
    unbounded = synthetic.markdown(synthetic_rows(80.0 + 90.0 * 50), chunk_rows=262_144)
    assert "(50.00×): at least as much as the events grew" in unbounded


# -- perf ----------------------------------------------------------------------------------------


def perf_rows(gateway_p50: tuple[float, float], errors: int = 0) -> tuple[list, list]:
    triton = [
        {"concurrency": c, "rps": 70.0 * c, "p50": 10.0, "p90": 12.0, "p99": 15.0} for c in (1, 2)
    ]
    codes = {"OK": 100} | ({"UNAVAILABLE": errors} if errors else {})
    gateway = [
        {"concurrency": c, "rps": 60.0 * c, "p50": p50, "p90": p50, "p99": p50 + 5, "codes": codes}
        for c, p50 in zip((1, 2), gateway_p50, strict=True)
    ]
    return triton, gateway


def test_perf_sentences_follow_the_ratios() -> None:
    slower = perf.markdown(*perf_rows((12.0, 15.0)))
    assert "runs from 1.20× (concurrency 1) to 1.50× (concurrency 2)" in slower
    assert "higher at 2 of 2 concurrencies" in slower
    assert "The gateway answered every call OK." in slower
    faster = perf.markdown(*perf_rows((8.0, 11.0), errors=3))
    assert "runs from 0.80× (concurrency 1) to 1.10× (concurrency 2)" in faster
    assert "higher at 1 of 2 concurrencies" in faster
    assert "Gateway errors at concurrency 1, 2." in faster
    assert "| 1 | 70.0 | 10.00 |" in slower and "p50 ratio" in slower
    assert "In-process serving" not in slower


def test_perf_compares_triton_at_saturation_with_in_process_workers() -> None:
    triton_rows, gateway_rows = perf_rows((12.0, 15.0))
    best = max(row["rps"] for row in triton_rows)
    in_process = {"workers": 2, "version": 3, "seconds": 6.0, "rps": best / 0.75}
    text = perf.markdown(triton_rows, gateway_rows, in_process, 0.8)
    assert (
        f"2 worker processes of one thread each, in the median round below: {best / 0.75:.1f} req/s"
        in text
    )
    assert "0.75× of it (goal >= 0.8×: missed)" in text
    in_process["rps"] = best / 0.9
    assert "0.90× of it (goal >= 0.8×: met)" in perf.markdown(triton_rows, gateway_rows, in_process)


def test_native_verdict_follows_the_median_round() -> None:
    def one_round(served: float, in_process: float) -> dict[str, Any]:
        best = {"rps": served, "concurrency": 8, "p50": 9.0}
        return {"runs": [best], "in_process": {"rps": in_process, "cpu_ms_per_request": 1.9}}

    rounds = [one_round(700.0, 1000.0), one_round(850.0, 1000.0), one_round(820.0, 1000.0)]
    text = native.native_markdown(rounds, 0.8)
    assert "| 3 | 1000.0 | 820.0 | 8 | 9.00 | 0.82× |" in text
    assert "Median share 0.82× over 3 rounds (from 0.70× to 0.85×); goal >= 0.8×: met." in text
    rounds[2] = one_round(790.0, 1000.0)
    assert "Median share 0.79× over 3 rounds" in native.native_markdown(rounds, 0.8)
    assert "goal >= 0.8×: missed." in native.native_markdown(rounds, 0.8)
