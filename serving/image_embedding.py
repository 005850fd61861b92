"""Image embeddings for items that arrive after a build: encoded image bytes -> the DALI
preprocessing -> the image tower the dataset was prepared with -> the image modality's vector.

`ImageEmbedder` is what a serving step runs per request: the same DALI pipeline and the same
tower weights (`<dataset>/image_tower/`) as `seminar data prepare`, so a new item's vector is
the one a prepare of a catalog holding it would give (tests/test_images.py). Each image is
checked first: one that is empty, not JPEG or PNG, or does not decode is refused by its
position with a DataError, before DALI sees the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from seminar import contract
from seminar.data.dali import ENCODED_INPUT, build_pipeline, gpu_present, host_rows
from seminar.data.images import PreprocessConfig, image_problem
from seminar.errors import DataError


def check_encoded(position: int, data: bytes) -> None:
    """DataError naming the image's position when `data` is not a decodable JPEG or PNG."""
    problem = image_problem(bytes(data))
    if problem:
        raise DataError(f"image {position} {problem}.")


class ImageEmbedder:
    """Encoded JPEG/PNG bytes -> (N, F) float32 image embeddings, F = the tower's output."""

    def __init__(
        self,
        tower_folder: Path,
        *,
        batch_size: int = contract.IMAGE_ENCODER_MAX_BATCH,
        threads: int = 1,
    ) -> None:
        from seminar.model.image_tower import load_tower, tower_id

        self.tower, raw = load_tower(tower_folder)
        self.tower_id = tower_id(tower_folder)
        self.preprocess = PreprocessConfig.from_json(raw["preprocess"])
        self.batch_size = batch_size
        self.gpu = gpu_present()
        self.pipeline = build_pipeline(None, self.preprocess, batch_size, threads, self.gpu)

    @property
    def dim(self) -> int:
        return int(self.tower.head.out_features)

    def pixels(self, images: Sequence[bytes]) -> np.ndarray:
        """(N, 3, crop, crop) float32: the checked images through the DALI pipeline."""
        for position, data in enumerate(images):
            check_encoded(position, data)
        out = np.empty((len(images), 3, self.preprocess.crop, self.preprocess.crop), np.float32)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            self.pipeline.feed_input(ENCODED_INPUT, [np.frombuffer(d, np.uint8) for d in chunk])
            (batch,) = self.pipeline.run()
            out[start : start + len(chunk)] = host_rows(batch, self.gpu)
        return out

    def embed(self, images: Sequence[bytes]) -> np.ndarray:
        """(N, F) float32 embeddings of the encoded images, in order."""
        from seminar.model.image_tower import embed_images

        if not images:
            return np.zeros((0, self.dim), np.float32)
        return embed_images(self.tower, self.pixels(images))
