"""`seminar bench quality`: every model (and, with --ablations, every SEMINAR ablation) over
seeds, on any prepared dataset.

Each (variant, seed) trains into RUNS/<variant>/seed<s>/ (a finished run with the same
configuration is reused, so an interrupted bench resumes), then REPORTS/quality.json maps
variant -> metric -> {mean, std, n} (metrics of seminar.training.metrics plus `seconds` and
`samples_per_s`) beside the record header, and REPORTS/quality.md holds the same numbers as
markdown tables with the sentences they support. The dataset is named from its meta.json.

Search and recommendation are reported apart (`targets` in quality.json): the test split's
search targets and rec targets, and the search split (every user's last search event) scored
with its query and with the query removed, so the report says whether the query changes the
ranking. Each run's figures are kept in RUNS/<variant>/seed<s>/targets.json.
"""

from __future__ import annotations

import json
import resource
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
# Figures of the search / recommendation tables; the query sentence compares on the first.
TARGET_METRICS = ("ndcg@10", "hit@10", "mrr")
# Evaluated target groups: the test split's search and rec targets, and the search split
# scored with and without its query (seminar.training.evaluate.evaluate_by_target).
TARGET_GROUPS = ("test-search", "test-rec", "search", "search-no-query")
# The query "changes the ranking" when it adds more than this many std of its per-seed gain.
QUERY_GAIN_STDS = 2.0
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


def evaluate_targets(run: Path, data: Path) -> dict[str, Any]:
    """A finished run's metrics by target group (TARGET_GROUPS) and each group's user count."""
    from seminar.training.batches import is_training_target, search_lists
    from seminar.training.checkpoint import load_run, open_run_data
    from seminar.training.evaluate import evaluate_by_target

    loaded = load_run(run)
    ds = open_run_data(loaded, data)
    _, positions, _ = search_lists(ds)
    test = evaluate_by_target(loaded.model, ds, "test")
    search = evaluate_by_target(loaded.model, ds, "search")
    no_query = evaluate_by_target(loaded.model, ds, "search", without_query=True)
    found = {
        "test-search": (test.metrics.get("search"), test.users["search"]),
        "test-rec": (test.metrics.get("rec"), test.users["rec"]),
        "search": (search.metrics.get("all"), search.users["all"]),
        "search-no-query": (no_query.metrics.get("all"), no_query.users["all"]),
    }
    return {
        "metrics": {group: metrics for group, (metrics, _) in found.items() if metrics},
        "users": {group: users for group, (_, users) in found.items()}
        | {"search-trained": int(is_training_target(ds, positions).sum())},
    }


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (training and evaluation run in it)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


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
        """The run's summary, with its figures by target group under "targets", and whether
        it was reused from an earlier bench."""
        from seminar.training.trainer import train_run

        out = self.config.runs / variant.name / f"seed{seed}"
        train, model = self.train_config(variant, seed)
        done, stamp, targets = out / "metrics.json", out / "bench.json", out / "targets.json"
        key = _result_key(variant, train.to_dict(), model)
        summary, reused = None, False
        if done.is_file() and stamp.is_file():
            old = json.loads(stamp.read_text())
            if _result_key(variant, old.get("train", {}), old.get("model", {})) == key:
                summary, reused = json.loads(done.read_text()), True
        if summary is None:
            targets.unlink(missing_ok=True)  # figures of an older run in this folder
            summary = train_run(self.config.data, out, variant.kind, train, model)
            stamp.write_text(json.dumps(key, indent=2) + "\n")
        if not targets.is_file():
            targets.write_text(json.dumps(evaluate_targets(out, self.config.data), indent=2))
        return {**summary, "targets": json.loads(targets.read_text())}, reused

    def run(self, echo: Callable[[str], None] = print) -> Record:
        """Every (variant, seed), seed-major, rewriting the report after each one."""
        header = Header.now(seeds=range(self.config.seeds))
        started = time.perf_counter()
        results: dict[str, dict[str, list[float]]] = {}
        by_target: dict[str, dict[str, dict[str, list[float]]]] = {}
        users: dict[str, int] = {}
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
            groups = by_target.setdefault(variant.name, {})
            for group, metrics in summary["targets"]["metrics"].items():
                for metric in TARGET_METRICS:
                    groups.setdefault(group, {}).setdefault(metric, []).append(metrics[metric])
            users.update(summary["targets"]["users"])
            record = self.write(
                header, results, time.perf_counter() - started, Targets(by_target, users)
            )
        assert record is not None  # QualityConfig has >= 1 seed and >= 1 variant
        echo(record.markdown())
        return record

    def write(
        self,
        header: Header,
        results: dict[str, dict[str, list[float]]],
        seconds: float,
        targets: Targets | None = None,
    ) -> Record:
        """(Re)write REPORTS/quality.{md,json} from the runs finished so far."""
        report = {
            name: {metric: Estimate.of(values).to_dict() for metric, values in row.items()}
            for name, row in results.items()
        }
        targets = targets or Targets({}, {})
        peak = peak_rss_mib()
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
            "peak_rss_mib": peak,
        }
        record = Record(
            title=(
                f"Quality: SEMINAR vs baselines on {self.dataset} "
                f"({_candidates(self.config.data)}, test split)"
            ),
            header=header,
            setup=(
                f"data: `{self.config.data}` ({self.dataset}); {self.config.seeds} seeds per "
                f"variant; bench time {seconds / 60:.1f} min; peak RSS of the bench process "
                f"(training and evaluation run in it) {peak:,.0f} MiB",
                f"train config: {json.dumps(shown_train)}; model overrides: {json.dumps(model)}",
                "cells are mean ± std over seeds (n per variant in quality.json); `s/run` is "
                "train+eval wall time; `samples/s` is fine-tuning throughput",
            ),
            body="\n".join(
                [
                    markdown(report, self.variants),
                    "",
                    targets.markdown(_candidates(self.config.data)),
                ]
            ),
            data={"bench": bench, **report, "targets": targets.to_dict()},
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


@dataclass(frozen=True)
class Targets:
    """Search and recommendation figures over seeds: variant -> group -> metric -> values,
    and the users each group holds (the same for every run on one dataset)."""

    values: dict[str, dict[str, dict[str, list[float]]]]
    users: dict[str, int]

    def estimate(self, variant: str, group: str, metric: str) -> Estimate | None:
        values = self.values.get(variant, {}).get(group, {}).get(metric)
        return Estimate.of(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "users": self.users,
            **{
                variant: {
                    group: {metric: Estimate.of(v).to_dict() for metric, v in metrics.items()}
                    for group, metrics in groups.items()
                }
                for variant, groups in self.values.items()
            },
        }

    def cells(self, variant: str, groups: Sequence[str]) -> list[str]:
        return [
            estimate.text(4) if (estimate := self.estimate(variant, group, metric)) else "—"
            for group in groups
            for metric in TARGET_METRICS
        ]

    def query_gain(self, variant: str) -> Estimate | None:
        """Per-seed search-split gain of the key metric from the query (with - without)."""
        with_query = self.values.get(variant, {}).get("search", {}).get(KEY_METRIC, [])
        without = self.values.get(variant, {}).get("search-no-query", {}).get(KEY_METRIC, [])
        if not with_query or len(with_query) != len(without):
            return None
        return Estimate.of([a - b for a, b in zip(with_query, without, strict=True)])

    def markdown(self, candidates: str) -> str:
        if not self.values:
            return ""
        variants = list(self.values)
        n = self.users
        test_columns = [f"{g} {m}" for g in ("search", "rec") for m in TARGET_METRICS]
        search_columns = [f"{g} {m}" for g in ("query", "no query") for m in TARGET_METRICS]
        lines = [
            "## Search and recommendation targets",
            "",
            f"Test split by its target event: {n.get('test-search', 0)} users whose target is "
            f"a search (it has a query), {n.get('test-rec', 0)} whose target is a "
            "recommendation.",
            "",
            markdown_table(
                ("variant", *test_columns),
                [(v, *self.cells(v, ("test-search", "test-rec"))) for v in variants],
            ),
            "",
            f"Search split: each of the {n.get('search', 0)} users who searched, ranked at "
            f"their last positive search event with every earlier event as history "
            f"({candidates}, the negatives sampled among items the user never touched), "
            "scored with the event's query and with the query removed (query index 0). "
            f"{n.get('search-trained', 0)} of these targets precede their user's validation "
            "target, so training may have seen them: the absolute figures may be optimistic, "
            "the comparison is on the same targets.",
            "",
            markdown_table(
                ("variant", *search_columns, f"query adds ({KEY_METRIC})"),
                [
                    (v, *self.cells(v, ("search", "search-no-query")), self._gain_text(v))
                    for v in variants
                ],
            ),
            "",
        ]
        return "\n".join(lines + [f"- {line}" for line in query_findings(self, variants)])

    def _gain_text(self, variant: str) -> str:
        gain = self.query_gain(variant)
        return f"{gain.mean:+.4f} ± {gain.std:.4f}" if gain else "—"


def query_findings(targets: Targets, variants: Sequence[str]) -> list[str]:
    """Per variant, whether the query changes its search ranking: the per-seed gain of the key
    metric from the query is resolved when its mean exceeds QUERY_GAIN_STDS std of it."""
    lines = []
    for variant in variants:
        gain = targets.query_gain(variant)
        with_query = targets.estimate(variant, "search", KEY_METRIC)
        without = targets.estimate(variant, "search-no-query", KEY_METRIC)
        if gain is None or with_query is None or without is None:
            continue
        numbers = (
            f"search-split {KEY_METRIC} {with_query.text(4)} with the query vs "
            f"{without.text(4)} without it, a per-seed gain of {gain.mean:+.4f} ± {gain.std:.4f}"
        )
        if gain.n < 2:
            verdict = "not resolved: one seed"
        elif gain.mean > QUERY_GAIN_STDS * gain.std:
            verdict = f"the query raises the ranking by more than {QUERY_GAIN_STDS:g} std"
        elif -gain.mean > QUERY_GAIN_STDS * gain.std:
            verdict = f"the query lowers the ranking by more than {QUERY_GAIN_STDS:g} std"
        else:
            verdict = f"the query does not change the ranking by more than {QUERY_GAIN_STDS:g} std"
        lines.append(f"{variant}: {numbers}; {verdict}.")
    return lines
