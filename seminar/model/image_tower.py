"""The image tower: a small CNN from a preprocessed image (3, crop, crop) to the image modality.

No pretrained vision weights can be had here, so the tower is trained from scratch on the
catalog's own images with the PSU alignment loss (seminar.model.psu.modality_alignment): its
output, projected into a shared space, must find its own item's text, id and attribute
embeddings among the other items of the batch. What it learns is what tells one item's image
from another's; `train_image_tower` returns the tower, whose outputs fill the image modality.

Saved beside the dataset (`save_tower` / `load_tower`: config.json + weights.safetensors), so
items that arrive after a build can be embedded by the same weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from seminar.contract import FIRST_ITEM_INDEX
from seminar.errors import ArtifactError
from seminar.model.config import ImageTowerConfig, Modality, ModelConfig, ModelKind
from seminar.model.encoders import ItemEncoder
from seminar.model.psu import modality_alignment

TOWER_CONFIG = "config.json"
TOWER_WEIGHTS = "weights.safetensors"


class ImageTower(nn.Module):
    """(B, 3, crop, crop) float32 normalised pixels -> (B, dim) image embedding."""

    def __init__(self, config: ImageTowerConfig) -> None:
        super().__init__()
        width = config.width
        layers: list[nn.Module] = []
        channels = 3
        for out in (width, 2 * width, 4 * width):  # each halves the side
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.ReLU()]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, config.dim)

    def forward(self, pixels: Tensor) -> Tensor:
        pooled = self.features(pixels).mean(dim=(2, 3))  # (B, C) global average
        return self.head(pooled)


def augment(pixels: Tensor, generator: torch.Generator, shift: int = 4) -> Tensor:
    """A random view of each image (B, 3, S, S): shifted (wrapping round) by up to `shift`
    pixels, mirrored half the time, brightness moved. The id the view must find stays the
    same, so where an item's shape sits, which way it faces and how light its background is
    stop telling items apart, and what it is (shape, colour, texture) has to."""
    batch, _, side, _ = pixels.shape
    moves = torch.randint(-shift, shift + 1, (2, batch, 1), generator=generator)
    positions = torch.arange(side).expand(batch, side)  # (B, S)
    rows = (positions - moves[0]) % side
    cols = (positions - moves[1]) % side
    mirrored = torch.rand(batch, 1, generator=generator) < 0.5
    cols = torch.where(mirrored, cols.flip(1), cols)
    views = pixels[
        torch.arange(batch)[:, None, None, None],
        torch.arange(pixels.shape[1])[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    brightness = 0.3 * (torch.rand(batch, 1, 1, 1, generator=generator) - 0.5)
    return views + brightness


def _other_modalities(
    item_text: np.ndarray | None,
    item_attrs: np.ndarray | None,
    num_attrs: int,
    config: ImageTowerConfig,
) -> ItemEncoder:
    """An item encoder (id, and text and attributes where given) over rows 2.. = the items."""
    n_items = len(item_text) if item_text is not None else len(item_attrs)  # type: ignore[arg-type]
    model_config = ModelConfig(
        kind=ModelKind.TWIN,  # no G projections: the raw modality embeddings are aligned
        dim=config.align_dim,
        num_items=n_items + FIRST_ITEM_INDEX,
        num_attrs=max(num_attrs, 1),
        attrs_per_item=1 if item_attrs is None else max(int(item_attrs.shape[1]), 1),
        text_dim=384 if item_text is None else int(item_text.shape[1]),
        use_text=item_text is not None,
        use_attr=item_attrs is not None,
        use_query_text=False,
    )
    encoder = ItemEncoder(model_config)

    def padded(rows: np.ndarray | None) -> np.ndarray | None:
        if rows is None:
            return None
        return np.concatenate([np.zeros((FIRST_ITEM_INDEX, *rows.shape[1:]), rows.dtype), rows])

    encoder.load_features(padded(item_text), padded(item_attrs))
    return encoder


def train_image_tower(
    pixels: np.ndarray,
    item_text: np.ndarray | None,
    item_attrs: np.ndarray | None,
    num_attrs: int,
    config: ImageTowerConfig,
) -> tuple[ImageTower, list[float]]:
    """Train the tower on N items' images (N, 3, crop, crop), aligned with their text (N, F)
    and attribute ids (N, A) where given, and always their learned id embedding. Returns the
    tower (eval mode) and the mean loss of each epoch."""
    if len(pixels) < 2:
        raise ValueError(f"the image tower needs at least 2 items with images, got {len(pixels)}")
    if item_text is None and item_attrs is None:
        item_attrs = np.zeros((len(pixels), 1), np.int32)  # the id embedding alone
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    tower = ImageTower(config)
    others = _other_modalities(item_text, item_attrs, num_attrs, config)
    image_proj = nn.Sequential(
        nn.Linear(config.dim, config.align_dim), nn.LayerNorm(config.align_dim)
    )
    parameters = [*tower.parameters(), *others.parameters(), *image_proj.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=config.lr)
    images = torch.from_numpy(np.ascontiguousarray(pixels, np.float32))
    losses = []
    tower.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(images), generator=generator)
        total, batches = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            rows = order[start : start + config.batch_size]
            if len(rows) < 2:
                continue
            raw: dict[Modality, tuple[Tensor, Tensor]] = dict(
                others.raw_modalities(rows + FIRST_ITEM_INDEX)
            )
            image = image_proj(tower(augment(images[rows], generator)))
            raw[Modality.IMAGE] = (image, torch.ones(len(rows), dtype=torch.bool))
            loss = modality_alignment(raw, config.tau)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, batches = total + float(loss.detach()), batches + 1
        losses.append(total / max(batches, 1))
    tower.eval()
    return tower, losses


@torch.no_grad()
def embed_images(tower: ImageTower, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(N, dim) float32 embeddings of preprocessed images (N, 3, crop, crop)."""
    tower.eval()
    out = [
        tower(torch.from_numpy(np.ascontiguousarray(pixels[start : start + batch_size])))
        for start in range(0, len(pixels), batch_size)
    ]
    dim = tower.head.out_features
    return torch.cat(out).numpy() if out else np.zeros((0, dim), np.float32)


def save_tower(
    tower: ImageTower, config: ImageTowerConfig, folder: Path, extra: dict[str, Any]
) -> None:
    """folder/config.json (the tower's config and `extra`, e.g. the preprocessing) and
    folder/weights.safetensors."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in tower.state_dict().items()}, str(folder / TOWER_WEIGHTS)
    )
    (folder / TOWER_CONFIG).write_text(
        json.dumps({"tower": asdict(config), **extra}, indent=2), encoding="utf-8"
    )


def tower_id(folder: Path) -> str:
    """Which tower a folder holds: the first 16 hex digits of its weights' SHA-256."""
    import hashlib

    path = folder / TOWER_WEIGHTS
    if not path.is_file():
        raise ArtifactError(f"{folder}: not an image tower folder (no {TOWER_WEIGHTS})")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def load_tower(folder: Path) -> tuple[ImageTower, dict[str, Any]]:
    """The tower saved by `save_tower` (eval mode) and its config.json."""
    from safetensors.torch import load_file

    raw = json.loads((folder / TOWER_CONFIG).read_text(encoding="utf-8"))
    tower = ImageTower(ImageTowerConfig(**raw["tower"]))
    tower.load_state_dict(load_file(str(folder / TOWER_WEIGHTS)))
    tower.eval()
    return tower, raw
