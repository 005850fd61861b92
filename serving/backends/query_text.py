"""Triton Python model `query_text`: query -> query_text_emb, the query's frozen MiniLM embedding.

Adapter only: the embedding is `seminar.serving.query_text.QueryTextEncoder` (MiniLM's
tokenizer.json and graph from this version's folder; each distinct query of the batch embedded
once, an empty query the zero row); the prologue and the request loop are
`seminar.serving.backend.PipelineModel`'s. A query over `max_query_bytes` or a non-UTF-8 query
gets INVALID_ARG; the other requests of the batch are still served. numpy, tokenizers and ONNX
Runtime only: this model never imports torch.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from seminar import contract
from seminar.build.minilm import TextEmbedder
from seminar.serving.backend import BackendContext, PipelineModel, RowBatch
from seminar.serving.query_text import QueryTextEncoder


class TritonPythonModel(PipelineModel):
    pb_utils = pb_utils

    def load(self, context: BackendContext) -> None:
        embedder = TextEmbedder(
            context.artifact(contract.PARAM_ONNX_FILE),
            context.artifact(contract.PARAM_TEXT_TOKENIZER),
            max_tokens=context.int_parameter(contract.PARAM_TEXT_MAX_TOKENS),
            intra_op_threads=context.int_parameter(contract.PARAM_INTRA_OP_THREADS),
        )
        max_query_bytes = context.int_parameter(contract.PARAM_MAX_QUERY_BYTES)
        self.encoder = QueryTextEncoder(embedder, max_query_bytes)

    def read(self, request) -> dict:
        """The request's query strings (an object array, rows first): the size and UTF-8
        checks reject only this request."""
        query = self.checked_input(request, contract.INPUT_QUERY)
        return {contract.INPUT_QUERY: np.asarray(self.encoder.decode(query), dtype=object)}

    def run(self, batch: RowBatch) -> dict:
        """Every accepted row of the batch at once, so a query shared by requests is embedded
        once."""
        return {contract.QUERY_TEXT_EMB: self.encoder.embed(batch.arrays[contract.INPUT_QUERY])}
