"""Triton Python model `features`: user_id, query, item_id -> user_index, query_tokens, item_index.

Adapter only: the mapping is `seminar.serving.features.FeatureMapper` (id -> index maps and the
tokenizer from this version's folder). A request with a negative id or a non-UTF-8 query gets
INVALID_ARG; the other requests of the batch are still served.
"""

import numpy as np
import triton_python_backend_utils as pb_utils
from seminar.build import pipeline as P

from seminar import constants as C
from seminar.serving.backend import (
    BackendContext,
    RequestError,
    check_numpy,
    verify_manifest,
)
from seminar.serving.features import FeatureMapper

_INPUTS = (C.INPUT_USER_ID, C.INPUT_QUERY, C.INPUT_ITEM_ID)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        check_numpy()
        ctx = BackendContext.from_args(args)
        verify_manifest(ctx.version_dir)
        self.mapper = FeatureMapper.load(
            user_ids=ctx.artifact(P.PARAM_USER_IDS),
            item_ids=ctx.artifact(P.PARAM_ITEM_IDS),
            tokens=ctx.artifact(P.PARAM_TOKENS),
            query_len=ctx.int_parameter(P.PARAM_QUERY_LEN),
        )
        self.output_dtypes = ctx.tensor_dtypes("output")

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            inputs = [pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in _INPUTS]
            try:
                outputs = self.mapper(*inputs)
            except RequestError as e:
                error = pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(value, dtype=self.output_dtypes[name]))
                for name, value in outputs.items()
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
