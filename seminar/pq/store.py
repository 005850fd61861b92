"""The lifelong sequence store: every user's time-ordered events as item index, query index and
per-modality PQ codes, contiguous (offsets + arrays), a directory of .npy files that loads
memory-mapped, described by manifest.json (shapes, dtypes, sha256).

Two code layouts, fixed by the code width:
- 8-bit: `codes` (N, M*S), one uint8 per code, event n at row n.
- 4-bit: faiss fast-scan blocks, built once here so that serving never re-packs: each user's
  events start a new block of 32 (`block_offsets`), `codes` (n_blocks, 16*M*S) holds two codes
  per byte; a user's last block is zero-padded.

Shape letters: U users, N events in all, M modalities, S sub-spaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seminar import manifest
from seminar.errors import ArtifactError
from seminar.pq.codebooks import QUERY_MODALITY
from seminar.pq.faiss_scan import FASTSCAN_BBS, pack_fastscan, unpack_fastscan

STORE_FORMAT = "seminar-pq-store/3"
# Older formats that still load. /2: the same layout, under the store's own manifest layout
# of then (seminar.manifest reads it). /1 (before the fast-scan layout): one byte per code at
# every width; a 4-bit store of it is re-packed in memory (not memory-mapped).
STORE_FORMAT_V2 = "seminar-pq-store/2"
STORE_FORMAT_V1 = "seminar-pq-store/1"
_ARRAYS = {"offsets": np.int64, "item": np.int32, "query": np.int32, "codes": np.uint8}
_FASTSCAN_ARRAYS = {"block_offsets": np.int64}


@dataclass(frozen=True)
class SequenceStore:
    """offsets (U+1,) int64; item, query (N,) int32; codes in the layout of `nbits` (module
    docstring), where code columns [m*S, (m+1)*S) hold modality `modalities[m]` (the query's
    codes come from the event's query index, the others from its item index);
    block_offsets (U+1,) int64, 4-bit only: user u's blocks are codes[block_offsets[u]:...]."""

    offsets: np.ndarray
    item: np.ndarray
    query: np.ndarray
    codes: np.ndarray
    modalities: tuple[str, ...]
    nbits: int
    block_offsets: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.item)
        if self.offsets.ndim != 1 or len(self.offsets) < 1 or self.offsets[0] != 0:
            raise ArtifactError("store offsets must be a 1-d array starting at 0")
        if self.offsets[-1] != n or np.any(np.diff(self.offsets) < 0):
            raise ArtifactError(f"store offsets must be non-decreasing and end at N={n}")
        if len(self.query) != n:
            raise ArtifactError(f"store arrays disagree on N: item {n}, query {len(self.query)}")
        if self.codes.ndim != 2 or self.code_size % len(self.modalities):
            raise ArtifactError(
                f"store codes must hold M*S codes per event with M={len(self.modalities)}"
            )
        if not self.fastscan:
            if self.codes.shape[0] != n:
                raise ArtifactError(
                    f"store arrays disagree on N: item {n}, codes {self.codes.shape[0]}"
                )
            return
        blocks = self.block_offsets
        if blocks is None or len(blocks) != len(self.offsets):
            raise ArtifactError(
                "a 4-bit store needs block_offsets (U+1,) beside its fast-scan codes"
            )
        need = -(-np.diff(self.offsets) // FASTSCAN_BBS)  # blocks each user needs
        if blocks[0] != 0 or np.any(np.diff(blocks) != need) or blocks[-1] != len(self.codes):
            raise ArtifactError("store block_offsets disagree with offsets and the fast-scan codes")

    @property
    def fastscan(self) -> bool:
        """True when codes are in faiss fast-scan blocks (4-bit codes)."""
        return self.nbits == 4

    @property
    def code_size(self) -> int:
        """M * S codes per event."""
        return self.codes.shape[1] // 16 if self.fastscan else self.codes.shape[1]

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_events(self) -> int:
        return len(self.item)

    @property
    def bytes_per_event(self) -> float:
        """Stored code bytes per event, block padding included (the ids are bookkeeping both
        the exact and the PQ layout need)."""
        return self.codes.nbytes / max(self.n_events, 1)

    def user_slice(self, user_index: int) -> slice:
        if not 0 <= user_index < self.n_users:
            raise ValueError(f"user_index {user_index} out of range [0, {self.n_users})")
        return slice(int(self.offsets[user_index]), int(self.offsets[user_index + 1]))

    def user(self, user_index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(item (L,), query (L,), codes (L, M*S) one per byte) of one user, time-ordered;
        views, except 4-bit codes, which are unpacked from their blocks."""
        sl = self.user_slice(user_index)
        if self.fastscan:
            codes = unpack_fastscan(self.user_blocks(user_index), sl.stop - sl.start)
        else:
            codes = self.codes[sl]
        return self.item[sl], self.query[sl], codes

    def user_blocks(self, user_index: int) -> np.ndarray:
        """One user's fast-scan blocks (ceil(L / 32), 16*M*S) uint8, a view (4-bit only)."""
        if not self.fastscan:
            raise RuntimeError("only a 4-bit store holds fast-scan blocks")
        self.user_slice(user_index)  # range check
        lo, hi = self.block_offsets[user_index], self.block_offsets[user_index + 1]
        return self.codes[int(lo) : int(hi)]

    def _arrays(self) -> dict[str, type]:
        return _ARRAYS | (_FASTSCAN_ARRAYS if self.fastscan else {})

    def save(self, out_dir: Path) -> manifest.Manifest:
        """Write one .npy per array plus manifest.json; returns the manifest."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        names = []
        for name, dtype in self._arrays().items():
            np.save(out_dir / f"{name}.npy", np.ascontiguousarray(getattr(self, name), dtype=dtype))
            names.append(f"{name}.npy")
        fields = {
            "format": STORE_FORMAT,
            "modalities": list(self.modalities),
            "nbits": self.nbits,
            "n_users": self.n_users,
            "n_events": self.n_events,
        }
        return manifest.write_manifest(out_dir, fields, names)

    @classmethod
    def load(cls, store_dir: Path, mmap: bool = True, verify: bool = False) -> SequenceStore:
        """Open a saved store; `mmap` maps the arrays read-only, `verify` checks every sha256
        (skip it when a manifest around this folder was verified already)."""
        store = manifest.read_manifest(store_dir)
        fmt = store.fields.get("format")
        if fmt not in (STORE_FORMAT, STORE_FORMAT_V2, STORE_FORMAT_V1):
            raise ArtifactError(f"{store.path}: format {fmt!r}, want {STORE_FORMAT!r}")
        if verify:
            store.verify()
        nbits = int(store.fields["nbits"])
        packed = nbits == 4 and fmt != STORE_FORMAT_V1
        loaded = {}
        for name in _ARRAYS | (_FASTSCAN_ARRAYS if packed else {}):
            array = np.load(store.file(f"{name}.npy"), mmap_mode="r" if mmap else None)
            store.check_array(f"{name}.npy", array)
            loaded[name] = array
        modalities = tuple(store.fields["modalities"])
        if nbits == 4 and not packed:
            return fastscan_store(
                loaded["offsets"], loaded["item"], loaded["query"], loaded["codes"], modalities
            )
        return cls(modalities=modalities, nbits=nbits, **loaded)


def event_codes(
    table_codes: dict[str, np.ndarray],
    modalities: tuple[str, ...],
    item: np.ndarray,
    query: np.ndarray,
) -> np.ndarray:
    """Per-event codes (N, M*S) from per-table-row codes (N_m, S) and the events' indices."""
    parts = [
        table_codes[m][query if m == QUERY_MODALITY else item]  # (N, S)
        for m in modalities
    ]
    return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.uint8)


def build_sequence_store(
    offsets: np.ndarray,
    item: np.ndarray,
    query: np.ndarray,
    table_codes: dict[str, np.ndarray],
    modalities: tuple[str, ...],
    nbits: int,
) -> SequenceStore:
    """Store from plain arrays: offsets (U+1,), item/query index per event (N,), and the codes
    of every table row per modality (from `Codebooks.encode`)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    item = np.asarray(item, dtype=np.int32)
    query = np.asarray(query, dtype=np.int32)
    for m in modalities:
        if m not in table_codes:
            raise ArtifactError(f"no table codes for modality {m!r}")
        rows = len(table_codes[m])
        idx = query if m == QUERY_MODALITY else item
        if len(idx) and (idx.min() < 0 or idx.max() >= rows):
            raise ArtifactError(
                f"event {'query' if m == QUERY_MODALITY else 'item'} index out of range for table {m!r} ({rows} rows)"
            )
    codes = event_codes(table_codes, modalities, item, query)
    if nbits != 4:
        return SequenceStore(offsets, item, query, codes, tuple(modalities), nbits)
    return fastscan_store(offsets, item, query, codes, tuple(modalities))


def fastscan_store(
    offsets: np.ndarray,
    item: np.ndarray,
    query: np.ndarray,
    codes: np.ndarray,
    modalities: tuple[str, ...],
) -> SequenceStore:
    """A 4-bit store from event codes (N, M*S), one per byte: every user starts a fresh block
    of 32 events, then all blocks are packed at once."""
    lengths = np.diff(offsets)
    block_offsets = np.concatenate([[0], np.cumsum(-(-lengths // FASTSCAN_BBS))]).astype(np.int64)
    owner = np.repeat(np.arange(len(lengths)), lengths)  # user of each event
    slot = block_offsets[owner] * FASTSCAN_BBS + (np.arange(len(item)) - offsets[owner])
    padded = np.zeros((int(block_offsets[-1]) * FASTSCAN_BBS, codes.shape[1]), np.uint8)
    padded[slot] = codes
    return SequenceStore(
        offsets, item, query, pack_fastscan(padded), tuple(modalities), 4, block_offsets
    )
