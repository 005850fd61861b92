"""`seminar bench quality`: every model and SEMINAR ablation over seeds, one harness.

Each (variant, seed) trains into RUNS/<variant>/seed<s>/ (a finished run is reused, so an
interrupted bench resumes), then reports/quality.json maps variant -> metric -> {mean, std, n}
(metrics of seminar.training.metrics plus `seconds` and `samples_per_s`) and reports/quality.md
holds the same numbers as markdown tables.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seminar.errors import UsageError
from seminar.provenance import cpu_model
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
# The report's columns: the acceptance metric first.
SHOWN = ("ndcg@10", "hit@10", "mrr", "ndcg@50", "hit@50", "hit@1", "auc", "gauc")


def summarize(values: list[float]) -> dict[str, float | int]:
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "n": len(arr)}


class QualityBench:
    def __init__(
        self,
        data: Path,
        runs: Path,
        reports: Path,
        seeds: int,
        ablations: bool,
        quick: bool,
        only: list[str],
    ) -> None:
        if seeds < 1:
            raise UsageError(f"--seeds must be >= 1, got {seeds}")
        variants = list(MODELS) + (list(ABLATIONS) if ablations else [])
        if only:
            known = {v.name for v in MODELS + ABLATIONS}
            unknown = sorted(set(only) - known)
            if unknown:
                raise UsageError(f"--only: unknown variant(s) {', '.join(unknown)}")
            variants = [v for v in MODELS + ABLATIONS if v.name in only]
        self.data, self.runs, self.reports = data, runs, reports
        self.seeds, self.quick, self.variants = seeds, quick, variants

    def config(self, variant: Variant, seed: int) -> tuple[TrainConfig, dict[str, Any]]:
        base = dict(QUICK_TRAIN) if self.quick else {}
        base.update(variant.train)
        model = dict(QUICK_MODEL) if self.quick else {}
        model.update(variant.model)
        return TrainConfig(**base, seed=seed, progress=False), model

    def run_one(self, variant: Variant, seed: int) -> dict[str, Any]:
        from seminar.training.trainer import train_run

        out = self.runs / variant.name / f"seed{seed}"
        tc, model = self.config(variant, seed)
        done = out / "metrics.json"
        stamp = out / "bench.json"
        key = {"kind": variant.kind, "train": tc.to_dict(), "model": model}
        if done.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == key:
            return json.loads(done.read_text())
        summary = train_run(self.data, out, variant.kind, tc, model)
        stamp.write_text(json.dumps(key, indent=2) + "\n")
        return summary

    def run(self, echo: Callable[[str], None] = print) -> dict[str, Any]:
        from tqdm import tqdm

        started = time.perf_counter()
        results: dict[str, dict[str, list[float]]] = {}
        # Seed-major order: an interrupted bench still has every variant at n >= 1.
        jobs = [(v, s) for s in range(self.seeds) for v in self.variants]
        report: dict[str, Any] = {}
        for variant, seed in tqdm(jobs, desc="quality bench"):
            summary = self.run_one(variant, seed)
            row = results.setdefault(variant.name, {})
            for metric in METRIC_NAMES:
                row.setdefault(metric, []).append(summary["test"][metric])
            row.setdefault("seconds", []).append(summary["seconds"]["total"])
            row.setdefault("samples_per_s", []).append(summary["samples_per_s"]["finetune"])
            report = self.write(results, time.perf_counter() - started)
        echo((self.reports / "quality.md").read_text())
        return report

    def write(self, results: dict[str, dict[str, list[float]]], seconds: float) -> dict[str, Any]:
        """(Re)write reports/quality.{json,md} from the runs finished so far."""
        report = {name: {m: summarize(v) for m, v in row.items()} for name, row in results.items()}
        self.reports.mkdir(parents=True, exist_ok=True)
        (self.reports / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
        (self.reports / "quality.md").write_text(self.markdown(report, seconds))
        return report

    def markdown(self, report: dict[str, Any], seconds: float) -> str:
        tc, model = self.config(self.variants[0], 0)
        lines = [
            "# Quality: SEMINAR vs baselines on MovieLens (1 + 99 candidates, test split)",
            "",
            f"Command: `{' '.join(sys.argv)}`  ",
            f"Machine: {cpu_model()}, {os.cpu_count()} CPUs; "
            f"data: `{self.data}`; seeds: {self.seeds}; bench time {seconds / 60:.1f} min.  ",
            f"Train config: {json.dumps({k: v for k, v in tc.to_dict().items() if k not in ('seed', 'progress')})}; "
            f"model overrides: {json.dumps(model)}.",
            "",
            "Cells are mean ± std over seeds (n per variant in quality.json); `s/run` is "
            "train+eval wall time; `samples/s` is fine-tuning throughput.",
            "",
        ]
        sections = (("Models", [v for v in self.variants if not v.ablation]),
                    ("Ablations (SEMINAR)", [v for v in self.variants if v.ablation]))  # fmt: skip
        for title, variants in sections:
            if not variants:
                continue
            lines += [f"## {title}", ""]
            lines.append("| variant | " + " | ".join(SHOWN) + " | s/run | samples/s |")
            lines.append("|---|" + "---:|" * (len(SHOWN) + 2))
            for v in variants:
                if v.name not in report:
                    continue
                row = report[v.name]
                cells = [f"{row[m]['mean']:.4f} ± {row[m]['std']:.4f}" for m in SHOWN]
                cells.append(f"{row['seconds']['mean']:.0f}")
                cells.append(f"{row['samples_per_s']['mean']:.0f}")
                lines.append(f"| {v.name} | " + " | ".join(cells) + " |")
            lines.append("")
        return "\n".join(lines)
