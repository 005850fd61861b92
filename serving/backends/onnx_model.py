"""Triton Python model for an exported graph on the cpu target (query_encoder, item_encoder,
ranking_head): runs this version's ONNX file with `seminar.serving.onnx_runner.OnnxRunner`.

The rows of every request in the batch go through one ONNX Runtime call (dynamic batching
merges candidate rows of many users), then are split back, one response per request. A
cancelled request gets CANCELLED; one whose index input lies outside its table (the ranges
this version's build wrote) gets INVALID_ARG, as the graph would wrap a negative index to a
real row. `seminar.serving.backend.StallGuard` keeps the stub from answering a batch
tritonserver may have given up.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from seminar import contract
from seminar.serving.backend import (
    BackendContext,
    RequestError,
    RowBatch,
    StallGuard,
    check_numpy,
    read_index_ranges,
    read_requests,
    require_index_range,
    require_rows,
    verify_manifest,
)
from seminar.serving.onnx_runner import OnnxRunner


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        check_numpy()
        ctx = BackendContext.from_args(args)
        verify_manifest(ctx.version_dir)
        self.input_dtypes = ctx.tensor_dtypes("input")
        self.input_dims = {t["name"]: tuple(int(d) for d in t["dims"]) for t in ctx.config["input"]}
        self.index_ranges = read_index_ranges(ctx.artifact(contract.PARAM_INDEX_RANGES))
        self.runner = OnnxRunner(
            ctx.artifact(contract.PARAM_ONNX_FILE),
            inputs=self.input_dtypes,
            outputs=ctx.tensor_dtypes("output"),
            intra_op_threads=ctx.int_parameter(contract.PARAM_INTRA_OP_THREADS),
            index_ranges=self.index_ranges,
        )
        self.stall_guard = StallGuard(ctx.model_name, ctx.version).start()

    def _read(self, request) -> dict:
        arrays = {}
        for name, dtype in self.input_dtypes.items():
            array = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
            require_rows(name, array, dtype, self.input_dims[name])
            if name in self.index_ranges:
                require_index_range(name, array, *self.index_ranges[name])
            arrays[name] = array
        return arrays

    def execute(self, requests: list) -> list:
        with self.stall_guard.executing():
            return self._execute(requests)

    def _execute(self, requests: list) -> list:
        per_request, errors = read_requests(requests, self._read)
        batch = RowBatch.concat(per_request)
        outputs = self.runner.run(batch.arrays) if batch.rows else {}
        responses = []
        for r in range(len(requests)):
            if r in errors:
                responses.append(_error_response(errors[r]))
                continue
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(value))
                for name, value in batch.split(outputs, r).items()
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses


def _error_response(error: RequestError):
    code = getattr(pb_utils.TritonError, error.triton_code)
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), code))
