"""The item catalog the gateway validates candidate ids against.

Sources, in the order `Catalog.load` tries them:

- a model repository (docs/design.md section 7): the newest `features/N/item_ids.npy`, the id
  map the served features model itself uses;
- a `features/N` version directory: its `item_ids.npy`;
- a prepared dataset directory (docs/design.md section 1): `arrays/item_ids.npy`;
- a plain `.npy` file of int64 item ids.

Every arm of an experiment is built from the same dataset, so one catalog serves all arms.
The gateway loads it again from the same place on every applied config reload: rolling out a
version built on a grown catalog (items that arrived after the last build) is a config change,
and the new items are accepted from then on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seminar.errors import DataError


class Catalog:
    """A sorted set of known item ids with a vectorised membership test."""

    def __init__(self, item_ids: np.ndarray, source: str, origin: Path | None = None) -> None:
        self.item_ids = np.unique(np.asarray(item_ids, dtype=np.int64))  # sorted (I,)
        self.source = source  # the file read
        self.origin = origin  # what `load` was given: where `reloaded` looks again

    def __len__(self) -> int:
        return len(self.item_ids)

    def unknown(self, ids: np.ndarray) -> np.ndarray:
        """The ids of `ids` that are not in the catalog, in request order."""
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self.item_ids, ids).clip(max=len(self.item_ids) - 1)
        return ids[self.item_ids[pos] != ids]

    @classmethod
    def load(cls, path: str | Path) -> Catalog:
        """From a model repository, a features version dir, a prepared dataset or an .npy file."""
        path = Path(path)
        file = _catalog_file(path)
        if file is None or not file.is_file():
            raise DataError(
                f"{path}: no item catalog here (expected a model repository with features/N/"
                "item_ids.npy, a prepared dataset with arrays/item_ids.npy, or an .npy file)"
            )
        try:
            ids = np.load(file)
        except (OSError, ValueError) as err:
            raise DataError(f"{file}: not a readable .npy array: {err}") from err
        if ids.ndim != 1 or ids.dtype.kind not in "iu" or len(ids) == 0:
            raise DataError(
                f"{file}: expected a non-empty 1-d integer array, got {ids.dtype} {ids.shape}"
            )
        return cls(ids, str(file), origin=path)

    def reloaded(self) -> Catalog:
        """The catalog at the same origin now (the newest features version of a repository)."""
        return self if self.origin is None else Catalog.load(self.origin)


def _catalog_file(path: Path) -> Path | None:
    if not path.is_dir():
        return path
    features = path / "features"
    versions = (
        sorted(
            (
                int(p.name)
                for p in features.iterdir()
                if p.name.isdecimal() and (p / "item_ids.npy").is_file()
            ),
        )
        if features.is_dir()
        else []
    )
    for candidate in (
        features / str(versions[-1]) / "item_ids.npy" if versions else None,
        path / "item_ids.npy",
        path / "arrays" / "item_ids.npy",
    ):
        if candidate is not None and candidate.is_file():
            return candidate
    return None
