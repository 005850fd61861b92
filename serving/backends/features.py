"""Triton Python model `features`: user_id, query, item_id -> user_index, query_tokens, item_index.

Adapter only: the mapping is `seminar.serving.features.FeatureMapper` (id -> index maps and the
tokenizer from this version's folder). A cancelled request gets CANCELLED; one with a negative
id, a query over `max_query_bytes` or a non-UTF-8 query gets INVALID_ARG; the other requests of
the batch are still served. `seminar.serving.backend.StallGuard` keeps the stub from answering
a batch tritonserver may have given up.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from seminar import contract
from seminar.serving.backend import (
    BackendContext,
    RequestError,
    StallGuard,
    check_numpy,
    read_requests,
    verify_manifest,
)
from seminar.serving.features import FeatureMapper

_INPUTS = (contract.INPUT_USER_ID, contract.INPUT_QUERY, contract.INPUT_ITEM_ID)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        check_numpy()
        ctx = BackendContext.from_args(args)
        verify_manifest(ctx.version_dir)
        self.mapper = FeatureMapper.load(
            user_ids=ctx.artifact(contract.PARAM_USER_IDS),
            item_ids=ctx.artifact(contract.PARAM_ITEM_IDS),
            tokens=ctx.artifact(contract.PARAM_TOKENS),
            query_len=ctx.int_parameter(contract.PARAM_QUERY_LEN),
            max_query_bytes=ctx.int_parameter(contract.PARAM_MAX_QUERY_BYTES),
        )
        self.output_dtypes = ctx.tensor_dtypes("output")
        self.stall_guard = StallGuard(ctx.model_name, ctx.version).start()

    def _map(self, request) -> dict:
        inputs = [pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in _INPUTS]
        return self.mapper(*inputs)

    def execute(self, requests: list) -> list:
        with self.stall_guard.executing():
            return self._execute(requests)

    def _execute(self, requests: list) -> list:
        per_request, errors = read_requests(requests, self._map)
        responses = []
        for r, outputs in enumerate(per_request):
            if r in errors:
                responses.append(_error_response(errors[r]))
                continue
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(value, self.output_dtypes[name]))
                for name, value in outputs.items()
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses


def _error_response(error: RequestError):
    code = getattr(pb_utils.TritonError, error.triton_code)
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), code))
