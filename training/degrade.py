"""A deliberately worse copy of a run: the arm that A/B experiments expect to lose.

`write_degraded_run(RUN, OUT)` writes OUT, a run directory that `seminar build` accepts like
any other, whose item encoder sees every catalog item as another one: each row of every
per-item table of the checkpoint (the learned id embedding and the frozen text, attribute and
image features) moves to the item a seeded permutation names. Histories and candidates are
permuted alike, so the model still runs and still scores, but what it learned about an item
is applied to a random other item: its rankings lose what they knew about users' tastes.

OUT/config.json carries `"degraded": {...}` (what was done, the seed, the source run), and
OUT has no metrics.json (the source run's would describe another model), so a degraded run is
never mistaken for a real one. `seminar simulate` serves one as the treatment arm to plant a
negative lift (docs/deploy.md, "Rehearsing an experiment with SYNTHETIC users").
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from seminar.contract import FIRST_ITEM_INDEX
from seminar.errors import ArtifactError, ConflictError
from seminar.training.checkpoint import CHECKPOINT, CONFIG, read_config

DEGRADED_FIELD = "degraded"
ITEM_ENCODER_PREFIX = "item_encoder."


def write_degraded_run(run: str | Path, out: str | Path, seed: int = 0) -> Path:
    """Write the degraded copy of `run` to `out` (which must not exist); returns `out`."""
    run, out = Path(run), Path(out)
    config = read_config(run)
    if out.exists():
        raise ConflictError(f"{out}: exists; choose a new directory for the degraded run")
    num_items = int(config["model"]["num_items"])
    checkpoint = run / CHECKPOINT
    try:
        state = load_file(str(checkpoint))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ArtifactError(f"{checkpoint}: not a readable safetensors file ({err}).") from err
    # PAD and OOV keep their rows: only real items trade places.
    order = np.arange(num_items)
    order[FIRST_ITEM_INDEX:] = FIRST_ITEM_INDEX + np.random.default_rng(seed).permutation(
        num_items - FIRST_ITEM_INDEX
    )
    index = torch.from_numpy(order)
    permuted = sorted(
        name
        for name, tensor in state.items()
        if name.startswith(ITEM_ENCODER_PREFIX) and tensor.ndim and tensor.shape[0] == num_items
    )
    if not permuted:
        raise ArtifactError(f"{checkpoint}: no per-item table of {num_items} rows to permute")
    degraded = {
        name: tensor[index].contiguous() if name in permuted else tensor
        for name, tensor in state.items()
    }
    out.mkdir(parents=True)
    save_file(degraded, str(out / CHECKPOINT))
    config[DEGRADED_FIELD] = {
        "what": "DEGRADED on purpose: every per-item table's rows permuted between items; "
        "not a trained model, the losing arm of an A/B simulation",
        "permuted": permuted,
        "seed": seed,
        "source_run": run.name,
    }
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out
