"""The NVIDIA DALI image pipeline: file read -> JPEG/PNG decode -> resize -> crop -> normalise.

One pipeline, two placements: on a machine with a CUDA GPU the decoder runs "mixed" (nvJPEG)
and resize and normalisation run on the GPU; without one every operator runs on the CPU
(device_id=None). Batches come back as (N, 3, crop, crop) float32 on the host, in the order of
the paths given. `seminar.data.images.pil_preprocess` computes the same thing in PIL; the two
agree within PIXEL_TOLERANCE (tests/test_images.py, reports/images.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from seminar.data.images import PreprocessConfig
from seminar.errors import DataError

# DALI's antialiased linear resize and PIL's bilinear resize (which antialiases when it
# shrinks) round differently; measured on the synthetic renders: at most 1 level of 255,
# 0.14 on average. The bound leaves one more level for other images and decoders.
PIXEL_TOLERANCE: Final = {"max": 2.0, "mean": 0.5}  # intensity levels, 0-255 scale
ENCODED_INPUT: Final = "encoded"  # the pipeline input of encoded image bytes (serving)


def gpu_present() -> bool:
    """Whether DALI's GPU operators can run here (a CUDA device that torch sees)."""
    import torch

    return torch.cuda.is_available()


def build_pipeline(
    files: Sequence[str] | None,
    config: PreprocessConfig,
    batch_size: int,
    threads: int,
    gpu: bool,
) -> Any:
    """A built DALI pipeline: over `files` in order (the last batch padded by repeating), or
    with files None over encoded images fed each run as the input ENCODED_INPUT (a batch of
    up to `batch_size` uint8 arrays, e.g. the bytes a serving request carries)."""
    from nvidia.dali import fn, pipeline_def, types

    # Fed images: one batch in flight, so each run returns the batch fed just before it.
    queue = 2 if files is not None else 1

    @pipeline_def(
        batch_size=batch_size,
        num_threads=threads,
        device_id=0 if gpu else None,
        prefetch_queue_depth=queue,
    )
    def preprocess() -> Any:
        if files is None:
            encoded = fn.external_source(name=ENCODED_INPUT, dtype=types.UINT8, ndim=1)
        else:
            encoded, _ = fn.readers.file(
                files=list(files), random_shuffle=False, pad_last_batch=True, name="reader"
            )
        images = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB)
        # Linear with antialiasing: what PIL's BILINEAR does when it shrinks an image; the
        # output size is rounded first and the scale follows it, as in PIL (not subpixel).
        images = fn.resize(
            images,
            resize_shorter=config.resize,
            interp_type=types.INTERP_LINEAR,
            antialias=True,
            subpixel_scale=False,
        )
        return fn.crop_mirror_normalize(
            images,
            crop=(config.crop, config.crop),
            mean=list(config.mean),
            std=list(config.std),
            dtype=types.FLOAT,
            output_layout="CHW",
        )

    pipeline = preprocess()
    pipeline.build()
    return pipeline


def host_rows(batch: Any, gpu: bool) -> np.ndarray:
    """A pipeline output batch as (n, 3, crop, crop) float32 on the host."""
    return np.stack([np.asarray(sample) for sample in (batch.as_cpu() if gpu else batch)])


def dali_preprocess(
    paths: Sequence[Path],
    config: PreprocessConfig,
    *,
    batch_size: int = 64,
    threads: int = 1,
    gpu: bool | None = None,
) -> np.ndarray:
    """(N, 3, crop, crop) float32 for the image files `paths`, in order (gpu None: use one
    when present). A file DALI cannot read or decode is a DataError naming the pipeline's
    message; `seminar.data.images.check_images` names the item first where it can."""
    out = np.empty((len(paths), 3, config.crop, config.crop), np.float32)
    if not paths:
        return out
    use_gpu = gpu_present() if gpu is None else gpu
    try:
        pipeline = build_pipeline([str(p) for p in paths], config, batch_size, threads, use_gpu)
        done = 0
        for _ in range(math.ceil(len(paths) / batch_size)):
            (batch,) = pipeline.run()
            rows = host_rows(batch, use_gpu)
            take = min(len(rows), len(paths) - done)
            out[done : done + take] = rows[:take]
            done += take
    except RuntimeError as err:
        raise DataError(f"the DALI image pipeline failed on {len(paths)} files: {err}") from err
    return out
