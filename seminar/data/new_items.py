"""Items that arrive after a build: catalog rows that `seminar data append --items` adds.

A file of new items has the catalog's columns (docs/data.md). Where the dataset has an image
modality, each new item's image vector comes from, in order of preference:
  - its `image_embedding` column, as `seminar client embed-images` writes it from the served
    `image_encoder` step (the file's metadata names the tower that made the vectors, and a
    tower other than the dataset's is refused: its vectors live in another space);
  - its `image_ref` file, through the dataset's own DALI preprocessing and image tower, the
    same code and weights that step runs;
  - neither: a zero vector (the item has no image).
An item id the catalog already has, or a missing, corrupt or non-JPEG/PNG image, is refused by
one sentence naming the item and file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as parquet

from seminar.data.dataset import PreparedDataset
from seminar.data.images import PreprocessConfig, check_images, resolve_refs
from seminar.data.prepare import IMAGE_TOWER
from seminar.data.schema import IMAGE_EMBEDDING, IMAGE_REF, image_embeddings, read_items
from seminar.errors import DataError

# Parquet file metadata key: the id (seminar.model.image_tower.tower_id) of the tower whose
# vectors fill a file's `image_embedding` column.
TOWER_ID_KEY = b"seminar.image_tower_id"


def tower_of(items_path: Path) -> str | None:
    """The tower id recorded in a Parquet catalog's metadata, or None."""
    metadata = parquet.read_schema(items_path).metadata or {}
    value = metadata.get(TOWER_ID_KEY)
    return value.decode() if value else None


def with_tower(table: pa.Table, tower_id: str) -> pa.Table:
    """`table` whose metadata names the tower that made its image vectors."""
    return table.replace_schema_metadata({**(table.schema.metadata or {}), TOWER_ID_KEY: tower_id})


def embed_image_files(tower_folder: Path, paths: list[Path]) -> np.ndarray:
    """(N, F) vectors of image files through the tower's own preprocessing and weights."""
    from seminar.data.dali import dali_preprocess
    from seminar.model.image_tower import embed_images, load_tower

    tower, raw = load_tower(tower_folder)
    return embed_images(
        tower, dali_preprocess(paths, PreprocessConfig.from_json(raw["preprocess"]))
    )


def new_catalog_rows(dataset: PreparedDataset, items_path: Path) -> pa.Table:
    """The rows of `items_path` in the columns of the dataset's catalog (module docstring)."""
    from seminar.model.image_tower import tower_id

    items_path = Path(items_path)
    new = read_items(items_path)
    ids = new.column("item_id").to_numpy()
    known = ids[np.isin(ids, np.asarray(dataset.item_ids))]
    if known.size:
        raise DataError(
            f"{items_path}: item {int(known[0])} is already in the catalog of {dataset.path} "
            f"({known.size} such); --items adds new items only"
        )
    base = dataset.items_table()
    columns: dict[str, pa.Array | list] = {
        "item_id": new.column("item_id"),
        "text": new.column("text"),
        "attributes": new.column("attributes"),
    }
    if IMAGE_REF in base.column_names:
        refs = new.column(IMAGE_REF) if IMAGE_REF in new.column_names else None
        columns[IMAGE_REF] = refs if refs is not None else pa.array([""] * len(ids), pa.string())
    if IMAGE_EMBEDDING in base.column_names:
        dim = int(np.asarray(dataset.item_image_emb).shape[1])
        tower = dataset.path / IMAGE_TOWER
        vectors = np.zeros((len(ids), dim), np.float32)
        given = image_embeddings(new)
        if given is not None:
            made_by, ours = tower_of(items_path), tower_id(tower) if tower.is_dir() else None
            if made_by and made_by != ours:
                raise DataError(
                    f"{items_path}: its image vectors come from image tower {made_by}, but "
                    f"{dataset.path} was embedded by tower {ours or 'of its own'}; embed the "
                    "images with a server that serves a version built from this dataset"
                )
            if given.shape[1] != dim:
                raise DataError(
                    f"{items_path}: column '{IMAGE_EMBEDDING}' has {given.shape[1]} values per "
                    f"item, the dataset's image vectors have {dim}"
                )
            vectors = given
        elif IMAGE_REF in new.column_names:
            paths = resolve_refs(new.column(IMAGE_REF).to_pylist(), items_path.parent)
            check_images(ids.tolist(), paths)
            rows = [row for row, path in enumerate(paths) if path is not None]
            if rows and not tower.is_dir():
                raise DataError(
                    f"{dataset.path}: has no image tower to embed the images of {items_path} "
                    f"with; give their vectors in '{IMAGE_EMBEDDING}'"
                )
            if rows:
                vectors[rows] = embed_image_files(tower, [paths[row] for row in rows])
        columns[IMAGE_EMBEDDING] = pa.array(list(vectors), base.schema.field(IMAGE_EMBEDDING).type)
    return pa.table(columns, schema=base.schema)
