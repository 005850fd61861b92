"""Triton Python model for an exported graph on the cpu target (query_encoder, item_encoder,
ranking_head): runs this version's ONNX file with `seminar.serving.onnx_runner.OnnxRunner`.

The rows of every request in the batch go through one ONNX Runtime call (dynamic batching
merges candidate rows of many users), then are split back, one response per request
(`seminar.serving.backend.PipelineModel`). A request whose index input lies outside its table
(the ranges this version's build wrote) gets INVALID_ARG, as the graph would wrap a negative
index to a real row.
"""

import triton_python_backend_utils as pb_utils

from seminar import contract
from seminar.serving.backend import (
    BackendContext,
    PipelineModel,
    RowBatch,
    read_index_ranges,
    require_index_range,
)
from seminar.serving.onnx_runner import OnnxRunner


class TritonPythonModel(PipelineModel):
    pb_utils = pb_utils

    def load(self, context: BackendContext) -> None:
        self.index_ranges = read_index_ranges(context.artifact(contract.PARAM_INDEX_RANGES))
        self.runner = OnnxRunner(
            context.artifact(contract.PARAM_ONNX_FILE),
            inputs=self.input_dtypes,
            outputs=self.output_dtypes,
            intra_op_threads=context.int_parameter(contract.PARAM_INTRA_OP_THREADS),
            index_ranges=self.index_ranges,
        )

    def read(self, request) -> dict:
        arrays = super().read(request)
        for name, (low, high) in self.index_ranges.items():
            require_index_range(name, arrays[name], low, high)
        return arrays

    def run(self, batch: RowBatch) -> dict:
        return self.runner.run(batch.arrays)
