"""`seminar bench quality`: every model (and, with --ablations, every SEMINAR ablation) over
seeds, on any prepared dataset.

Each (variant, seed) trains into RUNS/<variant>/seed<s>/ (a finished run with the same
configuration is reused, so an interrupted bench resumes), then REPORTS/quality.json maps
variant -> metric -> {mean, std, n} (metrics of seminar.training.metrics plus `seconds` and
`samples_per_s`) beside the record header, and REPORTS/quality.md holds the same numbers as
markdown tables with the sentences they support. The dataset is named from its meta.json.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seminar.bench.harness import (
    SCRATCH,
    Estimate,
    Header,
    Record,
    comparison,
    dataset_name,
    markdown_table,
    write_record,
)
from seminar.errors import UsageError
from seminar.training.config import QUICK_MODEL, QUICK_TRAIN, TrainConfig
from seminar.training.metrics import METRIC_NAMES


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str
    train: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    ablation: bool = False


MODELS = (
    Variant("seminar", "seminar"),
    Variant("twin", "twin"),
    Variant("sim", "sim"),
    Variant("eta", "eta"),
    Variant("din", "din"),
)
ABLATIONS = (
    Variant("seminar-no-pretrain", "seminar", train={"pretrain": False}, ablation=True),
    Variant("seminar-no-align", "seminar", train={"align_weight": 0.0}, ablation=True),
    Variant("seminar-no-next", "seminar", train={"next_weight": 0.0}, ablation=True),
    Variant("seminar-no-relevance", "seminar", train={"relevance_weight": 0.0}, ablation=True),
    Variant("seminar-no-text", "seminar", model={"use_text": False}, ablation=True),
    Variant("seminar-no-attr", "seminar", model={"use_attr": False}, ablation=True),
)
# The report's columns: the acceptance metric first; the sentences compare on it.
SHOWN = ("ndcg@10", "hit@10", "mrr", "ndcg@50", "hit@50", "hit@1", "auc", "gauc")
KEY_METRIC = SHOWN[0]
# TrainConfig fields that change how a run is watched, not what it trains: a finished run
# is reused whatever they were.
NOT_RESULT_FIELDS = ("progress", "threads")


@dataclass(frozen=True)
class QualityConfig:
    """One quality bench: which variants, how many seeds, where runs and the report go."""

    data: Path
    runs: Path = Path("runs/quality")
    reports: Path = SCRATCH
    seeds: int = 3
    ablations: bool = False
    quick: bool = False
    only: tuple[str, ...] = ()
    threads: int = 0  # torch threads per run, 0 = torch's default (as `seminar train`)

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise UsageError(f"--seeds must be >= 1, got {self.seeds}")
        if self.threads < 0:
            raise UsageError(f"--threads must be >= 0, got {self.threads}")
        unknown = sorted(set(self.only) - {v.name for v in MODELS + ABLATIONS})
        if unknown:
            raise UsageError(f"--only: unknown variant(s) {', '.join(unknown)}")

    def variants(self) -> list[Variant]:
        if self.only:
            return [v for v in MODELS + ABLATIONS if v.name in self.only]
        return list(MODELS) + (list(ABLATIONS) if self.ablations else [])


def _candidates(data: Path) -> str:
    try:
        negatives = json.loads((data / "meta.json").read_text(encoding="utf-8"))["negatives"]
    except (OSError, ValueError, KeyError, TypeError):
        return "sampled candidates"
    return f"1 + {negatives} candidates"


def _result_key(variant: Variant, train: dict[str, Any], model: dict[str, Any]) -> dict:
    kept = {k: v for k, v in train.items() if k not in NOT_RESULT_FIELDS}
    return {"kind": variant.kind, "train": kept, "model": model}


class QualityBench:
    def __init__(self, config: QualityConfig) -> None:
        self.config = config
        self.variants = config.variants()
        self.dataset = dataset_name(config.data)

    def train_config(self, variant: Variant, seed: int) -> tuple[TrainConfig, dict[str, Any]]:
        base = dict(QUICK_TRAIN) if self.config.quick else {}
        base.update(variant.train)
        model = dict(QUICK_MODEL) if self.config.quick else {}
        model.update(variant.model)
        train = TrainConfig(**base, seed=seed, threads=self.config.threads, progress=True)
        return train, model

    def run_one(self, variant: Variant, seed: int) -> tuple[dict[str, Any], bool]:
        """The run's summary, and whether it was reused from an earlier bench."""
        from seminar.training.trainer import train_run

        out = self.config.runs / variant.name / f"seed{seed}"
        train, model = self.train_config(variant, seed)
        done, stamp = out / "metrics.json", out / "bench.json"
        key = _result_key(variant, train.to_dict(), model)
        if done.is_file() and stamp.is_file():
            old = json.loads(stamp.read_text())
            if _result_key(variant, old.get("train", {}), old.get("model", {})) == key:
                return json.loads(done.read_text()), True
        summary = train_run(self.config.data, out, variant.kind, train, model)
        stamp.write_text(json.dumps(key, indent=2) + "\n")
        return summary, False

    def run(self, echo: Callable[[str], None] = print) -> Record:
        """Every (variant, seed), seed-major, rewriting the report after each one."""
        header = Header.now(seeds=range(self.config.seeds))
        started = time.perf_counter()
        results: dict[str, dict[str, list[float]]] = {}
        # Seed-major order: an interrupted bench still has every variant at n >= 1.
        jobs = [(v, s) for s in range(self.config.seeds) for v in self.variants]
        record = None
        for index, (variant, seed) in enumerate(jobs, start=1):
            elapsed = (time.perf_counter() - started) / 60
            echo(
                f"[{index}/{len(jobs)}, {elapsed:.1f} min] {variant.name} seed {seed} -> "
                f"{self.config.runs / variant.name / f'seed{seed}'}"
            )
            summary, reused = self.run_one(variant, seed)
            if reused:
                echo("  reused the finished run (same configuration)")
            row = results.setdefault(variant.name, {})
            for metric in METRIC_NAMES:
                row.setdefault(metric, []).append(summary["test"][metric])
            row.setdefault("seconds", []).append(summary["seconds"]["total"])
            row.setdefault("samples_per_s", []).append(summary["samples_per_s"]["finetune"])
            record = self.write(header, results, time.perf_counter() - started)
        assert record is not None  # QualityConfig has >= 1 seed and >= 1 variant
        echo(record.markdown())
        return record

    def write(
        self, header: Header, results: dict[str, dict[str, list[float]]], seconds: float
    ) -> Record:
        """(Re)write REPORTS/quality.{md,json} from the runs finished so far."""
        report = {
            name: {metric: Estimate.of(values).to_dict() for metric, values in row.items()}
            for name, row in results.items()
        }
        train, model = self.train_config(self.variants[0], 0)
        shown_train = {k: v for k, v in train.to_dict().items() if k not in ("seed", "progress")}
        bench = {
            "dataset": self.dataset,
            "data": str(self.config.data),
            "seeds": self.config.seeds,
            "quick": self.config.quick,
            "train": shown_train,
            "model_overrides": model,
            "seconds": seconds,
        }
        record = Record(
            title=(
                f"Quality: SEMINAR vs baselines on {self.dataset} "
                f"({_candidates(self.config.data)}, test split)"
            ),
            header=header,
            setup=(
                f"data: `{self.config.data}` ({self.dataset}); {self.config.seeds} seeds per "
                f"variant; bench time {seconds / 60:.1f} min",
                f"train config: {json.dumps(shown_train)}; model overrides: {json.dumps(model)}",
                "cells are mean ± std over seeds (n per variant in quality.json); `s/run` is "
                "train+eval wall time; `samples/s` is fine-tuning throughput",
            ),
            body=markdown(report, self.variants),
            data={"bench": bench, **report},
        )
        write_record(record, self.config.reports / "quality")
        return record


def _estimate(row: dict[str, Any], metric: str) -> Estimate:
    return Estimate(**row[metric])


def findings(report: dict[str, Any], models: Sequence[str], ablations: Sequence[str]) -> list[str]:
    """The sentences the numbers support: which model leads on the key metric and whether
    its lead is resolved, and what each ablation does to SEMINAR."""
    lines = []
    measured = [name for name in models if name in report]
    if len(measured) > 1:
        ranked = sorted(measured, key=lambda n: -report[n][KEY_METRIC]["mean"])
        best = ranked[0]
        lines.append(f"- Highest mean {KEY_METRIC}: {best}.")
        for other in ranked[1:]:
            lines.append(
                "- "
                + comparison(
                    best,
                    _estimate(report[best], KEY_METRIC),
                    other,
                    _estimate(report[other], KEY_METRIC),
                    lower_is_better=False,
                    better=f"higher on {KEY_METRIC}",
                    digits=4,
                )
                + "."
            )
    if "seminar" in report:
        for name in (a for a in ablations if a in report):
            lines.append(
                "- "
                + comparison(
                    name,
                    _estimate(report[name], KEY_METRIC),
                    "seminar",
                    _estimate(report["seminar"], KEY_METRIC),
                    lower_is_better=False,
                    better=f"higher on {KEY_METRIC}",
                    digits=4,
                )
                + "."
            )
    return lines


def markdown(report: dict[str, Any], variants: Sequence[Variant]) -> str:
    lines: list[str] = []
    sections = (("Models", [v for v in variants if not v.ablation]),
                ("Ablations (SEMINAR)", [v for v in variants if v.ablation]))  # fmt: skip
    for title, members in sections:
        cells = []
        for variant in (v for v in members if v.name in report):
            row = report[variant.name]
            cells.append(
                (
                    variant.name,
                    *(_estimate(row, metric).text(4) for metric in SHOWN),
                    f"{row['seconds']['mean']:.0f}",
                    f"{row['samples_per_s']['mean']:.0f}",
                )
            )
        if cells:
            columns = ("variant", *SHOWN, "s/run", "samples/s")
            lines += [f"## {title}", "", markdown_table(columns, cells), ""]
    models = [v.name for v in variants if not v.ablation]
    ablations = [v.name for v in variants if v.ablation]
    lines += findings(report, models, ablations)
    return "\n".join(lines)
