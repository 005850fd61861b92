"""The query's frozen MiniLM embedding at serving time: query strings -> (B, F) float32.

The `query_text` Triton model (serving/backends/query_text.py) is a thin adapter around
`QueryTextEncoder`; the same encoder runs in-process in tests and in `seminar bench serving`.
The MiniLM graph and its tokenizer travel with the model version (query_text/N/{model.onnx,
tokenizer.json}); `seminar.build.minilm.TextEmbedder` runs them, the very runtime the build's
parity gate checked against `seminar.data.features.embed_texts`, so a query never seen in
training embeds as the training queries did.

- an empty query (a recommendation request) -> the all-zero row, never MiniLM(""): that is
  how the prepared dataset stores "no query" (row 0 of query_text_emb.npy);
- the ~100 candidate rows of one request share one query, and dynamic batching merges a few
  requests: each distinct query of the batch is embedded once, then scattered to its rows.
  That is the cost that matters (MiniLM per row would be ~100x the work);
- queries over `max_query_bytes` and non-UTF-8 queries -> RequestError (INVALID_ARG for that
  request), with the same check and message as `features` (seminar.serving.features).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seminar import contract
from seminar.build.minilm import TextEmbedder
from seminar.serving.features import (
    DEFAULT_MAX_QUERY_BYTES,
    decode_queries,
    require_query_limit,
)


@dataclass(frozen=True)
class QueryTextEncoder:
    embedder: TextEmbedder
    max_query_bytes: int = DEFAULT_MAX_QUERY_BYTES

    def __post_init__(self) -> None:
        require_query_limit(self.max_query_bytes)

    @classmethod
    def from_version_dir(
        cls, version_dir: Path, max_query_bytes: int = DEFAULT_MAX_QUERY_BYTES
    ) -> QueryTextEncoder:
        """The query_text model's version folder (file names from seminar/contract.py)."""
        embedder = TextEmbedder(
            version_dir / contract.ONNX_FILE, version_dir / contract.TEXT_TOKENIZER_FILE
        )
        return cls(embedder=embedder, max_query_bytes=max_query_bytes)

    def decode(self, query: np.ndarray) -> list[str]:
        """(B, 1) query bytes -> B strings; RequestError rejects the request."""
        return decode_queries(query, self.max_query_bytes)

    def embed(self, texts: Sequence[str] | np.ndarray) -> np.ndarray:
        """B strings -> (B, F) float32: each distinct non-empty string embedded once (one
        ONNX Runtime call for all of them), scattered to its rows; "" -> the zero row."""
        out = np.zeros((len(texts), contract.QUERY_TEXT_DIM), np.float32)
        distinct, rows_of = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
        keep = np.flatnonzero(distinct != "")
        if keep.size == 0:
            return out
        embedded = self.embedder.embed([str(text) for text in distinct[keep]])  # (U, F)
        table = np.zeros((len(distinct), contract.QUERY_TEXT_DIM), np.float32)
        table[keep] = embedded
        out[:] = table[rows_of.reshape(-1)]
        return out

    def __call__(self, query: np.ndarray) -> dict[str, np.ndarray]:
        """query (B, 1) bytes objects -> {query_text_emb: (B, F) float32}."""
        return {contract.QUERY_TEXT_EMB: self.embed(self.decode(query))}
