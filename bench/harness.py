"""The one benchmark harness every `seminar bench ...` and `seminar perf` runs on.

- `Header`: what a number needs beside it to be read again later: the exact command line,
  the seed(s), the machine (CPU model, cores, GPU or none, Python, torch threads, load
  average at the start), the git revision and the date.
- `time_interleaved` / `time_concurrent`: the timer. Methods are called round-robin, one
  call of each per round, so that load from other jobs on a shared machine hits every method
  alike; warm-up rounds are dropped; `Timing` gives mean ± std and percentiles.
- `Record` / `write_record`: the one writer: STEM.md (title, header, body), STEM.json
  (header + data) and, when the bench draws one, a PNG.
- `ratio`, `within_noise`, `comparison`: the only way a report states a conclusion, so that
  every sentence is computed from the numbers of the run it describes.

A bench writes under `SCRATCH` (runs/bench/, ignored by git) unless its output option names
another place: running a bench from the repository root never overwrites the published
reports/; publishing one is naming reports/ on purpose.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from seminar.provenance import cpu_model, git_revision

# numpy and torch are imported where they are used: bench/cli.py imports this module for its
# defaults, and `seminar --help` must stay instant.

# Where every bench writes by default: a scratch folder, never the published reports/.
SCRATCH = Path("runs/bench")


# -- the record header ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    """The machine a run measured, as the header prints it."""

    cpu: str
    cores: int
    gpu: str | None
    python: str
    torch_threads: int
    load_average: float  # 1-minute load average when the run started

    @classmethod
    def here(cls) -> Machine:
        import torch

        return cls(
            cpu=cpu_model(),
            cores=os.cpu_count() or 1,
            gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            python=platform.python_version(),
            torch_threads=torch.get_num_threads(),
            load_average=round(os.getloadavg()[0], 2),
        )

    def sentence(self) -> str:
        return (
            f"{self.cpu}, {self.cores} cores, GPU: {self.gpu or 'none'}, Python {self.python}, "
            f"torch threads {self.torch_threads}, load average {self.load_average:.1f} at start"
        )


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed: `seminar ...` for the console script or `python -m seminar.cli`,
    else the process's own argv (a test runner, a script)."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return "seminar"
    program = Path(argv[0])
    if program.name == "seminar" or program.parts[-2:] == ("cli", "__main__.py"):
        return shlex.join(["seminar", *argv[1:]])
    return shlex.join(argv)


@dataclass(frozen=True)
class Header:
    """Command, seeds, machine, revision and date of one bench run."""

    command: str
    seeds: tuple[int, ...]
    machine: Machine
    revision: str
    date: str  # ISO 8601, UTC, seconds

    @classmethod
    def now(cls, seeds: Sequence[int], command: str | None = None) -> Header:
        return cls(
            command=command_line() if command is None else command,
            seeds=tuple(seeds),
            machine=Machine.here(),
            revision=git_revision(),
            date=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    def lines(self) -> list[str]:
        """The header as markdown bullets."""
        seeds = ", ".join(str(s) for s in self.seeds) or "none"
        return [
            f"- command: `{self.command}`",
            f"- seed{'s' if len(self.seeds) > 1 else ''}: {seeds}",
            f"- machine: {self.machine.sentence()}",
            f"- revision: {self.revision}; date: {self.date}",
        ]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Header:
        return cls(**{**raw, "seeds": tuple(raw["seeds"]), "machine": Machine(**raw["machine"])})


def dataset_name(data: Path) -> str:
    """The name a prepared dataset records in its meta.json, else its folder's name: what a
    report calls the data it measured."""
    try:
        return str(json.loads((data / "meta.json").read_text(encoding="utf-8"))["name"])
    except (OSError, ValueError, KeyError, TypeError):
        return data.name


# -- the timer -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """mean ± std (sample std, 0 for one value) of n values."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Estimate:
        import numpy as np

        array = np.asarray(values, dtype=np.float64)
        if array.size == 0:
            raise ValueError("an estimate needs at least one value")
        std = float(array.std(ddof=1)) if array.size > 1 else 0.0
        return cls(float(array.mean()), std, int(array.size))

    def text(self, digits: int = 2) -> str:
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"

    def to_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "std": self.std, "n": self.n}


@dataclass(frozen=True)
class Timing:
    """Milliseconds of the timed calls of one method, warm-up dropped.

    wall_s: wall time of all the calls when they ran concurrently (throughput is then calls
    over wall time); None when they ran one after another (throughput is 1 / mean).
    """

    ms: tuple[float, ...] = field(repr=False)
    wall_s: float | None = None

    @property
    def estimate(self) -> Estimate:
        return Estimate.of(self.ms)

    @property
    def mean(self) -> float:
        return self.estimate.mean

    @property
    def std(self) -> float:
        return self.estimate.std

    @property
    def median(self) -> float:
        return self.percentile(50)

    def percentile(self, q: float) -> float:
        import numpy as np

        return float(np.percentile(self.ms, q))

    @property
    def throughput_rps(self) -> float:
        if self.wall_s is not None:
            return len(self.ms) / self.wall_s if self.wall_s > 0 else 0.0
        total_s = sum(self.ms) / 1e3
        return len(self.ms) / total_s if total_s > 0 else 0.0

    def summary(self) -> dict[str, float | int]:
        return {
            "mean_ms": self.mean,
            "std_ms": self.std,
            "p50_ms": self.percentile(50),
            "p90_ms": self.percentile(90),
            "p99_ms": self.percentile(99),
            "requests": len(self.ms),
            "throughput_rps": self.throughput_rps,
        }


def time_interleaved(
    methods: Mapping[str, Callable[[], Any]], repeats: int, warmup: int
) -> tuple[dict[str, Timing], dict[str, Any]]:
    """Time every method `repeats` times after `warmup` untimed rounds; each round calls every
    method once, in order. Returns the timings and each method's last result."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    ms: dict[str, list[float]] = {name: [] for name in methods}
    last: dict[str, Any] = {}
    for round_index in range(warmup + repeats):
        for name, method in methods.items():
            started = time.perf_counter()
            last[name] = method()
            if round_index >= warmup:
                ms[name].append((time.perf_counter() - started) * 1e3)
    return {name: Timing(tuple(values)) for name, values in ms.items()}, last


def time_concurrent(
    call: Callable[[], Any], requests: int, warmup: int, concurrency: int
) -> Timing:
    """`concurrency` threads each make requests / concurrency calls back to back after
    `warmup` untimed calls; `call` must be safe to run from several threads."""
    if concurrency < 1 or requests % concurrency:
        raise ValueError(f"requests {requests} must be a multiple of concurrency {concurrency}")
    for _ in range(warmup):
        call()

    def worker(calls: int) -> list[float]:
        out = []
        for _ in range(calls):
            started = time.perf_counter()
            call()
            out.append((time.perf_counter() - started) * 1e3)
        return out

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        parts = list(pool.map(worker, [requests // concurrency] * concurrency))
    return Timing(tuple(x for part in parts for x in part), wall_s=time.perf_counter() - started)


# -- numbers into sentences ----------------------------------------------------------------------


def ratio(value: float, anchor: float) -> str:
    """value / anchor as "N.NN×" ("—" when the anchor is 0)."""
    return f"{value / anchor:.2f}×" if anchor else "—"


def within_noise(first: Estimate, second: Estimate) -> bool:
    """Whether the two mean ± std intervals overlap: the difference is not resolved."""
    return abs(first.mean - second.mean) <= first.std + second.std


def comparison(
    first_name: str,
    first: Estimate,
    second_name: str,
    second: Estimate,
    *,
    lower_is_better: bool,
    better: str,
    unit: str = "",
    digits: int = 2,
) -> str:
    """One sentence that says which of two measurements wins, by what ratio, or that they are
    within noise, or that one side has a single measurement and no std to judge by. `better`
    is the comparative the ratio reads with ("faster", "higher")."""
    numbers = f"{first.text(digits)} vs {second.text(digits)}{unit}"
    if min(first.n, second.n) < 2:
        return f"{first_name} vs {second_name} is not resolved: one measurement ({numbers})"
    if within_noise(first, second):
        return f"{first_name} and {second_name} are within noise ({numbers})"
    if (first.mean < second.mean) == lower_is_better:
        (winner, win), (loser, lose) = (first_name, first), (second_name, second)
    else:
        (winner, win), (loser, lose) = (second_name, second), (first_name, first)
    high, low = max(first.mean, second.mean), min(first.mean, second.mean)
    return (
        f"{winner} is {ratio(high, low)} {better} than {loser} "
        f"({win.text(digits)} vs {lose.text(digits)}{unit})"
    )


def side(value: float, anchor: float, below: str, above: str) -> str:
    """`below` when value < anchor, else `above`: the word a ratio's side reads as."""
    return below if value < anchor else above


# -- the writer ----------------------------------------------------------------------------------


def markdown_table(
    columns: Sequence[str], rows: Sequence[Sequence[object]], align: str = ""
) -> str:
    """A markdown table; `align` has one letter per column, l or r (default: first column
    left, the others right)."""
    align = align or "l" + "r" * (len(columns) - 1)
    if len(align) != len(columns):
        raise ValueError(f"align {align!r} has {len(align)} letters for {len(columns)} columns")
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    lines = ["| " + " | ".join(columns) + " |", rule]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class Record:
    """One bench run's report: its markdown and its JSON come from the same numbers."""

    title: str
    header: Header
    setup: tuple[str, ...]  # what was measured and how, one markdown bullet each
    body: str  # tables and derived sentences
    data: Mapping[str, Any]

    def markdown(self) -> str:
        bullets = [*self.header.lines(), *(f"- {line}" for line in self.setup)]
        return "\n".join([f"# {self.title}", "", *bullets, "", self.body.rstrip(), ""])

    def to_json(self) -> dict[str, Any]:
        return {"header": self.header.to_dict(), **self.data}


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def write_record(
    record: Record,
    stem: Path,
    figure: Callable[[Path], None] | None = None,
    figure_path: Path | None = None,
) -> list[Path]:
    """Write STEM.md and STEM.json, and the figure (default STEM.png); returns the paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    markdown_path, json_path = stem.with_suffix(".md"), stem.with_suffix(".json")
    _write_atomically(markdown_path, record.markdown())
    _write_atomically(json_path, json.dumps(record.to_json(), indent=2, default=_jsonable) + "\n")
    paths = [markdown_path, json_path]
    if figure is not None:
        png = figure_path or stem.with_suffix(".png")
        figure(png)
        paths.append(png)
    return paths


def write_plotted(
    record: Record, stem: Path, plot: Callable[[dict[str, Any], Path], None]
) -> list[Path]:
    """`write_record` with the figure STEM.png drawn by `plot(the record's data, path)`."""
    return write_record(record, stem, figure=lambda path: plot(dict(record.data), path))


def read_record(stem: Path) -> tuple[Header, dict[str, Any]]:
    """The header and data of a record written by `write_record`."""
    raw = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
    header = Header.from_dict(raw.pop("header"))
    return header, raw


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
