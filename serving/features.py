"""Request features: external ids -> dense indices, query text -> token ids.

The `features` Triton model (serving/backends/features.py) is a thin adapter around
`FeatureMapper`; the same mapper runs in-process in tests and in `seminar bench serving`.
Maps travel with the model version (features/N/{user_ids.npy, item_ids.npy, tokens.json});
tokenisation is the data area's `QueryTokenizer`, so served queries tokenise exactly as the
training data did.

- user id known -> its user index into the sequence store; unknown -> -1 (cold start: scored,
  not rejected, docs/serving.md);
- item id known -> its item index (>= 2); unknown -> 1 (OOV embedding; the gateway rejects
  unknown ids earlier);
- negative ids, queries over `max_query_bytes`, non-UTF-8 queries -> RequestError
  (INVALID_ARG for that request). The size is checked before anything else touches the query:
  tokenizing a multi-megabyte query from a direct client held the model for seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seminar import contract
from seminar.data.tokenizer import QueryTokenizer
from seminar.serving.backend import RequestError

DEFAULT_MAX_QUERY_BYTES = 1024  # in-process callers; the served limit comes from config.pbtxt


def require_query_limit(max_query_bytes: int) -> None:
    """ValueError unless `max_query_bytes` is a usable limit (>= 1)."""
    if max_query_bytes < 1:
        raise ValueError(f"max_query_bytes must be >= 1, got {max_query_bytes}")


def decode_queries(query: np.ndarray, max_query_bytes: int) -> list[str]:
    """(B, 1) query bytes objects -> B strings; RequestError for a row over `max_query_bytes`
    (checked for every row before any is decoded) or one that is not UTF-8.

    Every model that reads the query string (features, query_text) checks it with this one
    function, so a request is rejected with the same message whichever step meets it first."""
    raw_queries = query.reshape(len(query))
    for row, raw in enumerate(raw_queries):
        size = len(raw) if isinstance(raw, bytes) else len(str(raw).encode("utf-8"))
        if size > max_query_bytes:
            raise RequestError(
                f"query row {row} is {size} bytes, over the limit of "
                f"{max_query_bytes} bytes (max_query_bytes)"
            )
    texts = []
    for row, raw in enumerate(raw_queries):
        try:
            texts.append(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
        except UnicodeDecodeError:
            raise RequestError(f"query row {row} is not valid UTF-8") from None
    return texts


def _sorted_ids(path: Path, what: str) -> np.ndarray:
    ids = np.load(path, allow_pickle=False)
    if ids.dtype != np.int64 or ids.ndim != 1:
        raise ValueError(f"{path}: {what} ids must be int64 (N,), got {ids.dtype} {ids.shape}")
    if len(ids) > 1 and not (np.diff(ids) > 0).all():
        raise ValueError(f"{path}: {what} ids must be strictly increasing")
    return ids


def _lookup(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each id in `sorted_ids` and whether it is there: (B,) -> (B,), (B,) bool."""
    if len(sorted_ids) == 0:
        return np.zeros(ids.shape, np.int64), np.zeros(ids.shape, bool)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return pos, sorted_ids[pos] == ids


@dataclass(frozen=True)
class FeatureMapper:
    user_ids: np.ndarray  # int64 (U,), external id of user index u, ascending
    item_ids: np.ndarray  # int64 (I,), external id of item index i + 2, ascending
    tokenizer: QueryTokenizer
    max_query_bytes: int = DEFAULT_MAX_QUERY_BYTES

    def __post_init__(self) -> None:
        require_query_limit(self.max_query_bytes)

    @classmethod
    def load(
        cls,
        user_ids: Path,
        item_ids: Path,
        tokens: Path,
        query_len: int,
        max_query_bytes: int = DEFAULT_MAX_QUERY_BYTES,
    ) -> FeatureMapper:
        return cls(
            user_ids=_sorted_ids(user_ids, "user"),
            item_ids=_sorted_ids(item_ids, "item"),
            tokenizer=QueryTokenizer.load(tokens, length=query_len),
            max_query_bytes=max_query_bytes,
        )

    @classmethod
    def from_version_dir(
        cls, version_dir: Path, query_len: int, max_query_bytes: int = DEFAULT_MAX_QUERY_BYTES
    ) -> FeatureMapper:
        """The features model's version folder (file names from seminar/contract.py)."""
        return cls.load(
            version_dir / contract.USER_IDS_FILE,
            version_dir / contract.ITEM_IDS_FILE,
            version_dir / contract.TOKENS_FILE,
            query_len,
            max_query_bytes,
        )

    def user_index(self, user_id: np.ndarray) -> np.ndarray:
        """(B,) int64 external ids -> (B,) int64 user index, -1 = cold start."""
        pos, found = _lookup(self.user_ids, user_id)
        return np.where(found, pos, contract.COLD_START_USER_INDEX).astype(np.int64)

    def item_index(self, item_id: np.ndarray) -> np.ndarray:
        """(B,) int64 external ids -> (B,) int64 item index, 1 = OOV."""
        pos, found = _lookup(self.item_ids, item_id)
        return np.where(found, pos + contract.FIRST_ITEM_INDEX, contract.OOV_ITEM_INDEX).astype(
            np.int64
        )

    def query_tokens(self, queries: list[str]) -> np.ndarray:
        """B query strings -> (B, T) int64 token ids; repeated queries are tokenised once."""
        unique = {q: self.tokenizer.encode(q) for q in set(queries)}
        return np.asarray([unique[q] for q in queries], dtype=np.int64).reshape(
            len(queries), self.tokenizer.length
        )

    def __call__(
        self, user_id: np.ndarray, query: np.ndarray, item_id: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Triton tensors in, Triton tensors out, all with a leading row dim B.

        user_id (B, 1) int64, query (B, 1) bytes objects, item_id (B, 1) int64 ->
        user_index (B, 1), query_tokens (B, T), item_index (B, 1), all int64, and
        query_checked (B, 1), the query as it came, once every row passed.
        """
        b = user_id.shape[0]
        if query.shape[0] != b or item_id.shape[0] != b:
            raise RequestError(
                f"inputs disagree on the number of rows: user_id {user_id.shape[0]}, "
                f"query {query.shape[0]}, item_id {item_id.shape[0]}"
            )
        users, items = user_id.reshape(b), item_id.reshape(b)  # (B, 1) -> (B,)
        for name, ids in (("user_id", users), ("item_id", items)):
            if (ids < 0).any():
                row = int(np.flatnonzero(ids < 0)[0])
                raise RequestError(f"{name} must be >= 0, row {row} has {int(ids[row])}")
        texts = decode_queries(query, self.max_query_bytes)
        return {
            contract.USER_INDEX: self.user_index(users).reshape(b, 1),
            contract.QUERY_TOKENS: self.query_tokens(texts),
            contract.ITEM_INDEX: self.item_index(items).reshape(b, 1),
            # the checked query, for query_text (which therefore runs after this step)
            contract.QUERY_CHECKED: query.reshape(b, 1),
        }
