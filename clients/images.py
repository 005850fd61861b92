"""New items' image vectors from the served `image_encoder` step (`seminar client embed-images`).

Reads a catalog of items that arrived after a build (its `image_ref` files), checks each image
(a missing, corrupt or non-JPEG/PNG file is named with its item, before any call), sends the
bytes to Triton's `image_encoder` a batch at a time, and writes the catalog with an
`image_embedding` column whose Parquet metadata names the tower that made the vectors, for
`seminar data append --items` (seminar.data.new_items), which refuses another dataset's tower.
The file appears whole or not at all.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as parquet

from seminar import contract
from seminar.data.images import check_images, resolve_refs
from seminar.data.new_items import with_tower
from seminar.data.schema import IMAGE_EMBEDDING, IMAGE_REF, read_items
from seminar.errors import DataError, ServiceError


def encode_images(
    server: str, images: list[bytes], timeout_s: float, version: int = 0
) -> tuple[np.ndarray, str]:
    """(N, F) vectors of encoded images from Triton's image_encoder, and the tower's id."""
    import tritonclient.grpc as triton_grpc
    from tritonclient.utils import InferenceServerException

    client = triton_grpc.InferenceServerClient(server)
    vectors, towers = [], set()
    try:
        for start in range(0, len(images), contract.IMAGE_ENCODER_MAX_BATCH):
            chunk = images[start : start + contract.IMAGE_ENCODER_MAX_BATCH]
            tensor = triton_grpc.InferInput(contract.INPUT_IMAGE, [len(chunk), 1], "BYTES")
            tensor.set_data_from_numpy(np.array(chunk, dtype=object).reshape(-1, 1))
            try:
                result = client.infer(
                    contract.IMAGE_ENCODER_MODEL,
                    [tensor],
                    model_version=str(version or ""),
                    client_timeout=timeout_s,
                )
            except InferenceServerException as err:
                raise ServiceError(
                    f"{server}: {contract.IMAGE_ENCODER_MODEL} answered images {start} to "
                    f"{start + len(chunk) - 1} with {err.status()}: {err.message()}"
                ) from None
            vectors.append(result.as_numpy(contract.IMAGE_EMB))
            towers.update(t.decode() for t in result.as_numpy(contract.IMAGE_TOWER_ID).ravel())
    finally:
        client.close()
    if len(towers) > 1:  # versions of several datasets answered one run of calls
        raise ServiceError(f"{server}: image vectors came from several towers {sorted(towers)}")
    return np.concatenate(vectors).astype(np.float32), towers.pop()


def embed_new_items(
    server: str, items: Path, out: Path, *, timeout_s: float = 30.0, version: int = 0
) -> int:
    """Write `out`: the catalog `items` with the served step's image vectors (module
    docstring); returns how many items have an image."""
    catalog = read_items(items)
    if IMAGE_REF not in catalog.column_names:
        raise DataError(f"{items}: has no '{IMAGE_REF}' column: no image to embed")
    ids = catalog.column("item_id").to_pylist()
    paths = resolve_refs(catalog.column(IMAGE_REF).to_pylist(), Path(items).parent)
    check_images(ids, paths)
    rows = [row for row, path in enumerate(paths) if path is not None]
    if not rows:
        raise DataError(f"{items}: no item names an image file in '{IMAGE_REF}'")
    found, tower = encode_images(
        server, [paths[row].read_bytes() for row in rows], timeout_s, version
    )
    vectors = np.zeros((len(ids), found.shape[1]), np.float32)
    vectors[rows] = found
    if IMAGE_EMBEDDING in catalog.column_names:
        catalog = catalog.drop_columns([IMAGE_EMBEDDING])
    column = pa.array(list(vectors), pa.list_(pa.float32()))
    table = with_tower(catalog.append_column(IMAGE_EMBEDDING, column), tower)
    out = Path(out)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        parquet.write_table(table, partial)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return len(rows)
