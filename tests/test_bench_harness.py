"""The one bench harness: header, interleaved timer, writer, and the sentences from numbers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from seminar.bench import harness
from seminar.bench.harness import Estimate, Header, Machine, Record, Timing
from seminar.provenance import cpu_model, git_revision


def fixed_header(seeds: tuple[int, ...] = (0,)) -> Header:
    machine = Machine("Test CPU", 2, None, "3.11.7", 1, 0.5)
    return Header(
        "seminar bench test --seed 0", seeds, machine, "abc123", "2025-01-01T00:00:00+00:00"
    )


def test_warm_up_rounds_are_called_and_dropped() -> None:
    calls = {"slow_start": 0}

    def slow_start() -> int:
        calls["slow_start"] += 1
        if calls["slow_start"] <= 2:
            time.sleep(0.05)  # the warm-up rounds are the slow ones
        return calls["slow_start"]

    timings, last = harness.time_interleaved({"slow_start": slow_start}, repeats=3, warmup=2)
    assert calls["slow_start"] == 5
    assert len(timings["slow_start"].ms) == 3
    assert max(timings["slow_start"].ms) < 40  # no warm-up call is among the timed ones
    assert last["slow_start"] == 5


def test_methods_are_interleaved_round_by_round() -> None:
    order: list[str] = []
    methods = {name: (lambda name=name: order.append(name)) for name in ("a", "b", "c")}
    harness.time_interleaved(methods, repeats=2, warmup=1)
    assert order == ["a", "b", "c"] * 3


def test_timer_rejects_no_repeats() -> None:
    with pytest.raises(ValueError, match="repeats"):
        harness.time_interleaved({"a": lambda: None}, repeats=0, warmup=0)


def test_timing_mean_std_and_percentiles() -> None:
    timing = Timing((1.0, 2.0, 3.0, 4.0, 5.0))
    assert timing.mean == 3.0
    assert timing.std == pytest.approx(1.5811, abs=1e-4)  # sample std
    assert timing.median == 3.0
    assert timing.percentile(100) == 5.0
    assert timing.estimate.text() == "3.00 ± 1.58"
    assert timing.throughput_rps == pytest.approx(5 / 0.015)
    summary = timing.summary()
    assert summary["requests"] == 5 and summary["p50_ms"] == 3.0
    assert Estimate.of([2.0]) == Estimate(2.0, 0.0, 1)


def test_concurrent_timer_splits_requests_over_threads() -> None:
    timing = harness.time_concurrent(lambda: time.sleep(0.001), requests=8, warmup=1, concurrency=4)
    assert len(timing.ms) == 8 and timing.wall_s is not None
    assert timing.throughput_rps == pytest.approx(8 / timing.wall_s)
    with pytest.raises(ValueError, match="multiple of concurrency"):
        harness.time_concurrent(lambda: None, requests=6, warmup=0, concurrency=4)


def test_header_names_machine_command_seeds_revision_and_date() -> None:
    header = Header.now(seeds=(3, 4), command="seminar bench x --seed 3")
    text = "\n".join(header.lines())
    assert "seminar bench x --seed 3" in text
    assert "seeds: 3, 4" in text
    assert cpu_model() in text and f"{header.machine.cores} cores" in text
    assert "GPU: " in text and "Python " in text and "torch threads " in text
    assert "load average" in text
    assert git_revision() in text and header.date[:4] in text


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["/venv/bin/seminar", "bench", "pq", "--out", "a b"], "seminar bench pq --out 'a b'"),
        (["/repo/cli/__main__.py", "bench", "soak"], "seminar bench soak"),
        (["pytest", "-q", "tests"], "pytest -q tests"),
    ],
)
def test_command_line_is_the_command_as_typed(argv: list[str], expected: str) -> None:
    assert harness.command_line(argv) == expected


def test_writer_round_trip(tmp_path: Path) -> None:
    drawn: list[Path] = []
    record = Record(
        title="Round trip",
        header=fixed_header(seeds=(1, 2)),
        setup=("runs: 3",),
        body="| a | b |\n|---|---:|\n| x | 1 |",
        data={"rows": [{"a": "x", "b": 1}], "path": Path("somewhere")},
    )
    paths = harness.write_record(
        record,
        tmp_path / "out" / "thing",
        figure=lambda p: (drawn.append(p), p.write_bytes(b"png")),
    )
    assert [p.name for p in paths] == ["thing.md", "thing.json", "thing.png"]
    assert drawn == [tmp_path / "out" / "thing.png"]
    markdown = (tmp_path / "out" / "thing.md").read_text()
    assert markdown.startswith("# Round trip\n\n- command: `seminar bench test --seed 0`")
    assert "- seeds: 1, 2" in markdown and "- runs: 3" in markdown and "| x | 1 |" in markdown
    header, data = harness.read_record(tmp_path / "out" / "thing")
    assert header == record.header
    assert data == {"rows": [{"a": "x", "b": 1}], "path": "somewhere"}
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_markdown_table_aligns_columns() -> None:
    table = harness.markdown_table(("name", "ms"), [("a", "1.00")])
    assert table.splitlines() == ["| name | ms |", "|---|---:|", "| a | 1.00 |"]
    with pytest.raises(ValueError, match="align"):
        harness.markdown_table(("a", "b"), [], align="l")


def test_ratio_and_noise() -> None:
    assert harness.ratio(3.0, 2.0) == "1.50×"
    assert harness.ratio(1.0, 0.0) == "—"
    assert harness.within_noise(Estimate(10, 1, 5), Estimate(11.5, 1, 5))
    assert not harness.within_noise(Estimate(10, 1, 5), Estimate(12.5, 1, 5))


def test_comparison_follows_the_numbers() -> None:
    fast, slow = Estimate(10.0, 0.5, 20), Estimate(20.0, 0.5, 20)
    kwargs = {"lower_is_better": True, "better": "faster", "unit": " ms"}
    assert harness.comparison("A", fast, "B", slow, **kwargs) == (
        "A is 2.00× faster than B (10.00 ± 0.50 vs 20.00 ± 0.50 ms)"
    )
    assert harness.comparison("A", slow, "B", fast, **kwargs).startswith("B is 2.00× faster than A")
    noisy = Estimate(12.0, 5.0, 20)
    assert "within noise" in harness.comparison("A", fast, "B", noisy, **kwargs)
    high = harness.comparison(
        "A", Estimate(0.5, 0.01, 3), "B", Estimate(0.4, 0.01, 3), lower_is_better=False,
        better="higher",
    )  # fmt: skip
    assert high.startswith("A is 1.25× higher than B")
    single = harness.comparison("A", Estimate(1.0, 0.0, 1), "B", slow, **kwargs)
    assert "not resolved" in single and "faster" not in single


def test_dataset_name_comes_from_meta_json(tmp_path: Path) -> None:
    (tmp_path / "meta.json").write_text('{"name": "shop-catalogue"}')
    assert harness.dataset_name(tmp_path) == "shop-catalogue"
    assert harness.dataset_name(tmp_path / "missing") == "missing"


def test_no_bench_writes_into_the_published_reports_by_default() -> None:
    import inspect

    from seminar.bench import cli

    commands = (
        cli.bench_synthetic, cli.bench_quality, cli.bench_pq, cli.bench_serving, cli.bench_soak,
        cli.perf, cli.bench_images,
    )  # fmt: skip
    for command in commands:
        outputs = {
            name: getattr(parameter.default, "default", parameter.default)
            for name, parameter in inspect.signature(command).parameters.items()
            if name in ("reports", "out", "out_dir")
        }
        assert len(outputs) == 1, command.__name__
        (path,) = outputs.values()
        assert Path(path).parts[:2] == ("runs", "bench"), (command.__name__, path)
