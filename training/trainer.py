"""PSU pretraining, then fine-tuning with early stopping; single process or DDP via torchrun.

    seminar train --data DATA --model seminar --out RUN                            # 1 process
    torchrun --nproc-per-node 2 -m seminar.cli train --data DATA --out RUN ...  # gloo on CPU

Every rank replays the same seeded global batch and trains on its contiguous share, so DDP's
gradient average equals the single-process gradient (seminar.training.batches.epoch_batches).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional
from tqdm import tqdm

from seminar.data.dataset import PreparedDataset
from seminar.errors import ArtifactError, ConflictError, DataError, UsageError, reading_options
from seminar.model.config import ModelConfig, ModelKind
from seminar.model.psu import PSU, transferable_state
from seminar.model.seminar import SeminarModel
from seminar.training.batches import Batch, epoch_batches, training_targets
from seminar.training.checkpoint import CURVE, METRICS, RESUME, save_run
from seminar.training.config import TrainConfig
from seminar.training.evaluate import evaluate_split

SELECT_METRIC = "ndcg@10"


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistContext:
        """torchrun sets WORLD_SIZE/RANK; gloo works on CPU (NCCL would need GPUs)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend=backend)
        return cls(rank=dist.get_rank(), world=dist.get_world_size())

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def broadcast(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.broadcast(t, src=0)
        return float(t.item())

    def wrap(self, module: nn.Module) -> nn.Module:
        if self.world == 1:
            return module
        # PSU variants with a loss switched off leave some parameters without gradients.
        return nn.parallel.DistributedDataParallel(module, find_unused_parameters=True)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def model_config_for(ds: PreparedDataset, kind: ModelKind | str, **overrides: Any) -> ModelConfig:
    """The model config with vocabulary sizes read from the dataset."""
    image_dim = 0 if ds.item_image_emb is None else int(ds.item_image_emb.shape[1])
    text_dim = 384 if ds.item_text_emb is None else int(ds.item_text_emb.shape[1])
    use_text = overrides.pop("use_text", True) and ds.item_text_emb is not None
    # A dataset prepared without text features has no query text either: tokens only.
    use_query_text = overrides.pop("use_query_text", True) and ds.query_text_emb is not None
    return ModelConfig(
        kind=ModelKind(kind),
        num_items=ds.n_item_rows,
        num_queries=ds.n_queries,
        num_tokens=len(ds.tokens),
        query_len=int(ds.query_tokens.shape[1]),
        num_attrs=max(len(ds.attributes), 1),
        attrs_per_item=max(int(ds.item_attrs.shape[1]), 1),
        text_dim=text_dim,
        image_dim=image_dim,
        use_text=use_text,
        use_query_text=use_query_text,
        **overrides,
    )


def new_model(config: ModelConfig, ds: PreparedDataset) -> SeminarModel:
    model = SeminarModel(config)
    model.load_features(
        ds.query_tokens,
        ds.item_text_emb,
        ds.item_attrs,
        ds.item_image_emb,
        query_text_emb=ds.query_text_emb,
    )
    return model


def finetune_model(
    config: ModelConfig, ds: PreparedDataset, pretrained: dict[str, torch.Tensor] | None
) -> SeminarModel:
    """A fresh downstream model; with PSU state, its embedding tables and modality projections
    start from the pretrained values (G, GSU/ESU and scorer keep their fresh initialisation)."""
    model = new_model(config, ds)
    if pretrained is not None:
        _, unexpected = model.load_state_dict(pretrained, strict=False)
        if unexpected:
            raise ArtifactError(f"pretrained state has tensors the model lacks: {unexpected[:3]}")
    return model


def data_info(ds: PreparedDataset) -> dict[str, Any]:
    return {
        "path": str(Path(ds.path).resolve()),
        "name": ds.meta.get("name", ""),
        "checksum": ds.checksum,
        "synthetic": ds.synthetic,
    }


def bce_loss(
    logits: torch.Tensor, target_query: torch.Tensor | None = None, search_weight: float = 1.0
) -> torch.Tensor:
    """Logits (B, 1 + N): column 0 is the positive, the rest sampled negatives.

    Rows whose target has a query (target_query > 0) count search_weight times. A plain mean
    over rows (not divided by the weights' sum) keeps the DDP ranks' average equal to the
    single-process loss.
    """
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1.0
    if target_query is None or search_weight == 1.0:
        return functional.binary_cross_entropy_with_logits(logits, labels)
    rows = torch.where(target_query > 0, search_weight, 1.0).to(logits.dtype)  # (B,)
    per_row = functional.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1)
    return (rows * per_row).mean()


def run_epoch(
    step_fn: Callable[[Batch], dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    batches: list[Batch] | Any,
    total: int,
    ctx: DistContext,
    desc: str,
    progress: bool,
) -> list[dict[str, float]]:
    """One pass; returns the per-step losses averaged over ranks."""
    log: list[dict[str, float]] = []
    bar = tqdm(batches, total=total, desc=desc, disable=not (progress and ctx.main), leave=False)
    for batch in bar:
        losses = step_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        row = {k: ctx.mean(float(v.detach())) for k, v in losses.items()}
        log.append(row)
        bar.set_postfix(loss=f"{row['total']:.4f}")
    bar.close()
    return log


def pretrain(
    ds: PreparedDataset, config: ModelConfig, tc: TrainConfig, targets: np.ndarray, ctx: DistContext
) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    """PSU pretraining; returns the transferable embedding state and the per-step losses."""
    torch.manual_seed(tc.seed)
    psu = PSU(new_model(config, ds), tc.psu())
    wrapped = ctx.wrap(psu)
    optimizer = torch.optim.Adam([p for p in psu.parameters() if p.requires_grad], lr=tc.lr)
    steps = len(targets) // tc.batch_size
    log: list[dict[str, float]] = []
    for epoch in range(tc.pretrain_epochs):
        batches = epoch_batches(
            ds,
            targets,
            batch_size=tc.batch_size,
            negatives=tc.negatives,
            max_len=config.max_history,
            seed=tc.seed * 1000 + 500 + epoch,
            rank=ctx.rank,
            world=ctx.world,
        )
        log += run_epoch(
            lambda b: wrapped(*b.inputs()), optimizer, batches, steps, ctx,
            f"pretrain {epoch + 1}/{tc.pretrain_epochs}", tc.progress,
        )  # fmt: skip
    return transferable_state(psu.model), log


def _save_curve(out: Path, history: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    if history["pretrain"]:
        for key in ("total", "align", "next", "relevance"):
            axes[0].plot([r[key] for r in history["pretrain"]], label=f"PSU {key}", alpha=0.7)
    offset = len(history["pretrain"])
    steps = np.arange(offset, offset + len(history["train"]))
    axes[0].plot(steps, [r["total"] for r in history["train"]], label="fine-tune BCE")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss")
    axes[0].legend(fontsize=7)
    axes[1].plot(np.arange(1, len(history["valid"]) + 1), history["valid"], marker="o")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel(f"valid {SELECT_METRIC}")
    fig.tight_layout()
    fig.savefig(out / CURVE, dpi=100)
    plt.close(fig)


def train_run(
    data: str | Path,
    out: str | Path,
    kind: ModelKind | str,
    tc: TrainConfig,
    model_overrides: dict[str, Any] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train (and pretrain) one model, evaluate it, and write the run directory."""
    threads = torch.get_num_threads()
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    try:
        return _train_run(data, out, kind, tc, model_overrides, resume)
    finally:
        torch.set_num_threads(threads)  # the caller's process (e.g. pytest) keeps its setting


def _train_run(
    data: str | Path,
    out: str | Path,
    kind: ModelKind | str,
    tc: TrainConfig,
    model_overrides: dict[str, Any] | None,
    resume: bool,
) -> dict[str, Any]:
    ctx = DistContext.from_env()
    if tc.batch_size % ctx.world:
        raise UsageError(f"batch_size {tc.batch_size} is not divisible by {ctx.world} ranks.")
    out = Path(out)
    ds = PreparedDataset.load(data)
    with reading_options():  # the overrides are the command's --dim, --heads, ...
        config = model_config_for(ds, kind, **dict(model_overrides or {}))
    targets = training_targets(ds, tc.max_train_targets, tc.seed)
    if len(targets) < tc.batch_size:
        raise DataError(f"{data}: {len(targets)} training targets, fewer than one batch.")
    seed_everything(tc.seed)
    started = time.perf_counter()
    history: dict[str, Any] = {"pretrain": [], "train": [], "valid": [], "valid_metrics": []}
    state = _load_resume(out, config, tc) if resume else None

    pretrained: dict[str, torch.Tensor] | None = None
    pretrain_seconds = 0.0
    if state is not None:
        history = json.loads(state["history"])
        pretrained = state.get("pretrained")
        pretrain_seconds = float(state["pretrain_seconds"])
    elif config.pretrain and tc.pretrain and tc.pretrain_epochs > 0:
        pretrained, history["pretrain"] = pretrain(ds, config, tc, targets, ctx)
        pretrain_seconds = time.perf_counter() - started

    torch.manual_seed(tc.seed + 1)
    model = finetune_model(config, ds, pretrained)
    wrapped = ctx.wrap(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    best, bad, first_epoch = -1.0, 0, 0
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        best_state, best = state["best_state"], float(state["best"])
        bad, first_epoch = int(state["bad"]), int(state["epoch"])

    steps = len(targets) // tc.batch_size
    finetune_started = time.perf_counter()
    trained_samples = 0
    for epoch in range(first_epoch, tc.epochs):
        if bad >= tc.patience > 0:
            break
        batches = epoch_batches(
            ds,
            targets,
            batch_size=tc.batch_size,
            negatives=tc.negatives,
            max_len=config.max_history,
            seed=tc.seed * 1000 + epoch,
            rank=ctx.rank,
            world=ctx.world,
        )
        history["train"] += run_epoch(
            lambda b: {"total": bce_loss(wrapped(*b.inputs()), b.target_query, tc.search_weight)},
            optimizer, batches, steps, ctx,
            f"{config.kind.value} epoch {epoch + 1}/{tc.epochs}", tc.progress,
        )  # fmt: skip
        trained_samples += steps * tc.batch_size
        metric = -1.0
        if ctx.main:
            valid = evaluate_split(
                model, ds, "valid", max_history=tc.eval_max_history, max_users=tc.eval_users
            )
            history["valid_metrics"].append(valid)
            metric = valid[SELECT_METRIC]
        metric = ctx.broadcast(metric)
        history["valid"].append(metric)
        if metric > best:
            best, bad = metric, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
        if ctx.main:
            _save_resume(out, config, tc, epoch + 1, model, optimizer, best, best_state, bad,
                         history, pretrained, pretrain_seconds)  # fmt: skip
    finetune_seconds = time.perf_counter() - finetune_started

    model.load_state_dict(best_state)
    summary: dict[str, Any] = {}
    if ctx.main:
        eval_started = time.perf_counter()
        test = evaluate_split(model, ds, "test", max_history=tc.eval_max_history)
        eval_seconds = time.perf_counter() - eval_started
        pretrain_samples = len(history["pretrain"]) * tc.batch_size
        summary = {
            "model": config.kind.value,
            "test": test,
            "valid_best": best,
            "valid": history["valid"],
            "epochs": len(history["valid"]),
            "seconds": {
                "pretrain": pretrain_seconds,
                "finetune": finetune_seconds,
                "eval": eval_seconds,
                "total": time.perf_counter() - started,
            },
            "samples_per_s": {
                "pretrain": pretrain_samples / pretrain_seconds if pretrain_seconds else 0.0,
                "finetune": trained_samples / finetune_seconds if finetune_seconds else 0.0,
            },
            "world_size": ctx.world,
            "train_loss": [r["total"] for r in history["train"]],
            "pretrain_loss": history["pretrain"],
        }
        save_run(out, model, tc, data_info(ds))
        (out / METRICS).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        _save_curve(out, history)
    if ctx.world > 1:
        dist.barrier()
    return summary


def _save_resume(
    out: Path,
    config: ModelConfig,
    tc: TrainConfig,
    epoch: int,
    model: SeminarModel,
    optimizer: torch.optim.Optimizer,
    best: float,
    best_state: dict[str, torch.Tensor],
    bad: int,
    history: dict[str, Any],
    pretrained: dict[str, torch.Tensor] | None,
    pretrain_seconds: float,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {
        "config": _resume_key(config, tc),
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "best": best,
        "best_state": best_state,
        "bad": bad,
        "history": json.dumps(history),
        "pretrain_seconds": pretrain_seconds,
    }
    if pretrained is not None:
        state["pretrained"] = pretrained
    tmp = out / (RESUME + ".tmp")
    torch.save(state, tmp)
    tmp.replace(out / RESUME)


def _load_resume(out: Path, config: ModelConfig, tc: TrainConfig) -> dict[str, Any] | None:
    path = out / RESUME
    if not path.is_file():
        return None
    state = torch.load(path, weights_only=True)
    if state["config"] != _resume_key(config, tc):
        raise ConflictError(f"{path}: saved with a different configuration; cannot resume.")
    return state


def _resume_key(config: ModelConfig, tc: TrainConfig) -> str:
    """What must match to resume (the progress bar setting may differ)."""
    train = {k: v for k, v in tc.to_dict().items() if k != "progress"}
    return json.dumps({"model": config.to_dict(), "train": train}, sort_keys=True)
