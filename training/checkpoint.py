"""Run directories: a checkpoint that rebuilds its model from its own config, no flags.

RUN/
  checkpoint.safetensors   model state (weights and the frozen feature buffers)
  config.json              {"format", "model": ModelConfig, "train": TrainConfig, "data": {...}, "git_commit"}
  metrics.json             valid/test metrics, timings, loss history (written by the trainer)
  curve.png                training curve
  resume.pt                optimizer + progress for --resume (tensors/primitives, weights_only)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from seminar.data.dataset import PreparedDataset
from seminar.errors import ArtifactError, DataError
from seminar.model.config import ModelConfig
from seminar.model.seminar import SeminarModel
from seminar.provenance import git_revision
from seminar.training.config import TrainConfig

FORMAT = 1
CHECKPOINT = "checkpoint.safetensors"
CONFIG = "config.json"
METRICS = "metrics.json"
CURVE = "curve.png"
RESUME = "resume.pt"


@dataclass(frozen=True)
class Run:
    path: Path
    model: SeminarModel
    model_config: ModelConfig
    train_config: TrainConfig
    data: dict[str, Any]  # {"path", "name", "checksum"}
    git_commit: str


def save_state(model: SeminarModel, path: Path) -> None:
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path))


def save_run(
    out: Path,
    model: SeminarModel,
    train_config: TrainConfig,
    data: dict[str, Any],
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_state(model, out / CHECKPOINT)
    config = {
        "format": FORMAT,
        "model": model.config.to_dict(),
        "train": train_config.to_dict(),
        "data": data,
        "git_commit": git_revision(),
    }
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def read_config(run: Path) -> dict[str, Any]:
    path = Path(run) / CONFIG
    if not Path(run).is_dir():
        raise ArtifactError(f"{run}: run directory not found.")
    if not path.is_file():
        raise ArtifactError(f"{path}: not found; {run} is not a training run directory.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: not valid JSON ({err.msg}).") from err
    if raw.get("format") != FORMAT:
        raise ArtifactError(f"{path}: field 'format' is {raw.get('format')!r}, expected {FORMAT}.")
    return raw


def load_run(run: str | Path) -> Run:
    """Rebuild the model of a run directory from its config.json and checkpoint."""
    run = Path(run)
    raw = read_config(run)
    try:
        model_config = ModelConfig.from_dict(raw["model"])
        train_config = TrainConfig.from_dict(raw["train"])
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{run / CONFIG}: invalid model/train config ({err}).") from err
    checkpoint = run / CHECKPOINT
    if not checkpoint.is_file():
        raise ArtifactError(f"{checkpoint}: not found.")
    model = SeminarModel(model_config)
    try:
        state = load_file(str(checkpoint))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ArtifactError(f"{checkpoint}: not a readable safetensors file ({err}).") from err
    load_state_checked(model, state, checkpoint)
    model.eval()
    return Run(
        path=run,
        model=model,
        model_config=model_config,
        train_config=train_config,
        data=dict(raw.get("data", {})),
        git_commit=str(raw.get("git_commit", "unknown")),
    )


def load_state_checked(model: SeminarModel, state: dict[str, torch.Tensor], source: Path) -> None:
    """load_state_dict(strict) with one sentence naming the first mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise ArtifactError(
            f"{source}: checkpoint is incompatible with its config ({what}; "
            f"{len(missing)} missing, {len(unexpected)} unexpected tensors)."
        )
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ArtifactError(
                f"{source}: checkpoint is incompatible with its config (tensor {name} has shape "
                f"{tuple(state[name].shape)}, the config builds {tuple(tensor.shape)})."
            )
    model.load_state_dict(state, strict=True)


def open_run_data(run: Run, data: str | Path | None = None) -> PreparedDataset:
    """The prepared dataset a run was trained on (or `data`), checked by checksum."""
    path = Path(data) if data is not None else Path(run.data.get("path", ""))
    try:
        ds = PreparedDataset.load(path)
    except DataError as err:
        raise DataError(f"{run.path}: cannot open its dataset ({err})") from err
    expected = run.data.get("checksum")
    if expected and ds.checksum != expected:
        raise DataError(
            f"{path}: dataset checksum {ds.checksum[:12]} differs from the one {run.path} was "
            f"trained on ({str(expected)[:12]}); pass the dataset it was trained on."
        )
    return ds
