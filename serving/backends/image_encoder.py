"""Triton Python model `image_encoder`: image -> image_emb, a new item's image modality vector.

Adapter only: the work is `seminar.serving.image_embedding.ImageEmbedder` (this version's
`image_tower/`: the dataset's tower weights and its DALI preprocessing), each row answered with
the tower's id beside its vector; the prologue and the
request loop are `seminar.serving.backend.PipelineModel`'s. A request with an empty, non-JPEG/PNG
or corrupt image gets INVALID_ARG naming the image's row; the other requests of the batch are
still served.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from seminar import contract
from seminar.errors import DataError
from seminar.serving.backend import BackendContext, PipelineModel, RequestError, RowBatch
from seminar.serving.image_embedding import ImageEmbedder, check_encoded


class TritonPythonModel(PipelineModel):
    pb_utils = pb_utils

    def load(self, context: BackendContext) -> None:
        tower = context.artifact(contract.PARAM_IMAGE_TOWER)
        batch = int(context.config.get("max_batch_size") or contract.IMAGE_ENCODER_MAX_BATCH)
        self.embedder = ImageEmbedder(tower, batch_size=batch)

    def read(self, request) -> dict:
        """The request's image bytes, each checked: a bad one rejects only this request."""
        rows = self.checked_input(request, contract.INPUT_IMAGE)
        images = [bytes(row[0]) for row in rows]
        try:
            for position, data in enumerate(images):
                check_encoded(position, data)
        except DataError as err:
            raise RequestError(str(err)) from None
        return {contract.INPUT_IMAGE: np.array(images, dtype=object)}

    def run(self, batch: RowBatch) -> dict:
        images = list(batch.arrays[contract.INPUT_IMAGE])
        tower = np.full((len(images), 1), self.embedder.tower_id.encode(), dtype=object)
        return {contract.IMAGE_EMB: self.embedder.embed(images), contract.IMAGE_TOWER_ID: tower}
