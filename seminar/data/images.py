"""Item images: SYNTHETIC renders, checking users' files, and the PIL preprocessing baseline.

A catalog brings images in one of two ways (docs/data.md, "Images"):
- `image_ref`: a path per item (relative to the items file's folder, or absolute; "" = no
  image) to a JPEG or PNG file. `seminar data prepare` checks every file, decodes and
  preprocesses them with NVIDIA DALI (seminar.data.dali), trains the small CNN image tower
  (seminar.model.image_tower) and stores its embeddings as the image modality.
- `image_embedding`: precomputed vectors, used as they are.

The synthetic generator renders one JPEG per item from its planted image topic: a shape, a
colour and a texture chosen by the topic, drawn at a jittered place and size, with colour and
pixel noise. The same seed gives the same bytes.

`pil_preprocess` is the reference the DALI pipeline is checked against: the same decode,
resize (bilinear with antialiasing, shorter side), centre crop and normalisation, in PIL and
numpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from seminar.errors import DataError

SYNTHETIC_IMAGES: Final = "images"  # folder of a synthetic dataset's renders
# What a synthetic image shows: topic k is shape k % 4, colour k % 5, texture k % 3, so that
# 60 topics look different.
SHAPES: Final = ("disc", "square", "triangle", "cross")
COLOURS: Final = ((220, 40, 40), (40, 170, 60), (40, 80, 220), (230, 200, 40), (150, 50, 180))
TEXTURES: Final = ("solid", "stripes", "checker")
DISTINCT_TOPICS: Final = 60
# The formats the DALI decoder and the baseline both read; anything else is refused by name.
ACCEPTED_FORMATS: Final = ("JPEG", "PNG")


@dataclass(frozen=True)
class PreprocessConfig:
    """Decode -> resize (shorter side) -> centre crop -> normalise; defaults live here only."""

    resize: int = 36  # shorter side after resizing, pixels
    crop: int = 32  # square centre crop fed to the image tower
    # Per-channel mean and std on the 0-255 scale (ImageNet's, as most vision towers use).
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    def __post_init__(self) -> None:
        if self.crop < 1 or self.resize < self.crop:
            raise ValueError(
                f"PreprocessConfig needs 1 <= crop <= resize, got crop {self.crop}, "
                f"resize {self.resize}"
            )
        if min(self.std) <= 0:
            raise ValueError(f"PreprocessConfig.std must be > 0, got {self.std}")

    @classmethod
    def from_json(cls, fields: Mapping[str, Any]) -> PreprocessConfig:
        """The config as a tower's config.json stores it (JSON lists for the tuples)."""
        return cls(**{key: tuple(v) if isinstance(v, list) else v for key, v in fields.items()})


@dataclass(frozen=True)
class RenderConfig:
    """How synthetic item images are drawn."""

    size: int = 64  # square image side, pixels
    jpeg_quality: int = 90
    pixel_noise: float = 12.0  # std of the Gaussian noise added to every pixel, 0-255 scale


def render_image(topic: int, rng: np.random.Generator, config: RenderConfig) -> np.ndarray:
    """(S, S, 3) uint8: the shape, colour and texture of `topic`, jittered by `rng`."""
    side = config.size
    shape = SHAPES[topic % len(SHAPES)]
    colour = np.array(COLOURS[topic % len(COLOURS)], np.float64)
    texture = TEXTURES[topic % len(TEXTURES)]
    rows, cols = np.mgrid[0:side, 0:side].astype(np.float64)
    radius = side * rng.uniform(0.25, 0.36)
    centre_row = side / 2 + rng.uniform(-0.12, 0.12) * side
    centre_col = side / 2 + rng.uniform(-0.12, 0.12) * side
    dy, dx = rows - centre_row, cols - centre_col
    if shape == "disc":
        inside = dx**2 + dy**2 <= radius**2
    elif shape == "square":
        inside = (np.abs(dx) <= 0.85 * radius) & (np.abs(dy) <= 0.85 * radius)
    elif shape == "triangle":
        inside = (dy <= 0.8 * radius) & (dy >= -radius + 1.8 * np.abs(dx))
    else:  # cross
        bar = 0.32 * radius
        inside = ((np.abs(dx) <= bar) & (np.abs(dy) <= radius)) | (
            (np.abs(dy) <= bar) & (np.abs(dx) <= radius)
        )
    period = 4
    if texture == "stripes":
        light = (rows // period) % 2 == 0
    elif texture == "checker":
        light = (rows // period + cols // period) % 2 == 0
    else:
        light = np.ones_like(inside)
    fill = np.clip(colour + rng.normal(0.0, 12.0, 3), 0, 255)  # colour jitter per image
    background = rng.uniform(170, 235)
    image = np.full((side, side, 3), background)
    image[inside & light] = fill
    image[inside & ~light] = 0.45 * fill
    image += rng.normal(0.0, config.pixel_noise, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_synthetic_images(
    folder: Path, item_ids: np.ndarray, image_topic: np.ndarray, seed: int, config: RenderConfig
) -> list[str]:
    """Render item i's image from image_topic[i] into folder/<item_id>.jpg; returns the file
    names. Each item has its own seeded stream, so an image depends on the seed and the item
    only."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for item_id, topic in zip(item_ids.tolist(), image_topic.tolist(), strict=True):
        pixels = render_image(int(topic), np.random.default_rng((seed, 4, item_id)), config)
        name = f"{item_id}.jpg"
        Image.fromarray(pixels).save(folder / name, "JPEG", quality=config.jpeg_quality)
        names.append(name)
    return names


def resolve_refs(refs: Sequence[str], base: Path) -> list[Path | None]:
    """Each `image_ref` as a path (relative ones under `base`); None where it is empty."""
    return [
        None if not ref else (base / ref if not Path(ref).is_absolute() else Path(ref))
        for ref in refs
    ]


def image_problem(source: Path | bytes) -> str | None:
    """What is wrong with an image file or an image's bytes, as the end of a sentence ("is
    GIF, not JPEG or PNG"), or None when it is a JPEG or PNG that decodes."""
    import io

    from PIL import Image, UnidentifiedImageError

    if isinstance(source, Path) and not source.is_file():
        return "does not exist"
    if isinstance(source, bytes) and not source:
        return "is empty (no bytes)"
    try:
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as image:
            if image.format not in ACCEPTED_FORMATS:
                return f"is {image.format}, not JPEG or PNG"
            image.load()  # decodes every pixel: a truncated file fails here
    except UnidentifiedImageError:
        return "is not an image (not JPEG or PNG)"
    except (OSError, SyntaxError, ValueError) as err:
        return f"is corrupt and does not decode ({err})"
    return None


def check_images(item_ids: Sequence[int], paths: Sequence[Path | None]) -> None:
    """DataError, one sentence naming the item and its file, at the first image that is
    missing, not a JPEG or PNG, or does not decode."""
    for item_id, path in zip(item_ids, paths, strict=True):
        problem = None if path is None else image_problem(path)
        if problem:
            raise DataError(f"item {item_id}: image file {path} {problem}.")


def pil_preprocess(paths: Sequence[Path], config: PreprocessConfig) -> np.ndarray:
    """(N, 3, crop, crop) float32: the baseline of the DALI pipeline, in PIL and numpy."""
    from PIL import Image

    mean = np.array(config.mean, np.float32)
    std = np.array(config.std, np.float32)
    out = np.empty((len(paths), 3, config.crop, config.crop), np.float32)
    for row, path in enumerate(paths):
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        width, height = rgb.size
        scale = config.resize / min(width, height)
        size = (max(config.resize, round(width * scale)), max(config.resize, round(height * scale)))
        resized = np.asarray(rgb.resize(size, Image.Resampling.BILINEAR), np.float32)
        top = (resized.shape[0] - config.crop) // 2
        left = (resized.shape[1] - config.crop) // 2
        crop = resized[top : top + config.crop, left : left + config.crop]
        out[row] = ((crop - mean) / std).transpose(2, 0, 1)
    return out
