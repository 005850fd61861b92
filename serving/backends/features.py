"""Triton Python model `features`: user_id, query, item_id -> user_index, query_tokens, item_index,
query_checked (the query passed through for `query_text`, which so runs after this step).

Adapter only: the mapping is `seminar.serving.features.FeatureMapper` (id -> index maps and the
tokenizer from this version's folder); the prologue and the request loop are
`seminar.serving.backend.PipelineModel`'s. A request with a negative id, a query over
`max_query_bytes` or a non-UTF-8 query gets INVALID_ARG; the other requests of the batch are
still served. numpy only: this model never imports torch.
"""

import triton_python_backend_utils as pb_utils

from seminar import contract
from seminar.serving.backend import BackendContext, PipelineModel
from seminar.serving.features import FeatureMapper

_INPUTS = (contract.INPUT_USER_ID, contract.INPUT_QUERY, contract.INPUT_ITEM_ID)


class TritonPythonModel(PipelineModel):
    pb_utils = pb_utils

    def load(self, context: BackendContext) -> None:
        self.mapper = FeatureMapper.load(
            user_ids=context.artifact(contract.PARAM_USER_IDS),
            item_ids=context.artifact(contract.PARAM_ITEM_IDS),
            tokens=context.artifact(contract.PARAM_TOKENS),
            query_len=context.int_parameter(contract.PARAM_QUERY_LEN),
            max_query_bytes=context.int_parameter(contract.PARAM_MAX_QUERY_BYTES),
        )

    def read(self, request) -> dict:
        """The mapped rows: the mapping is per request, so a bad row rejects only its request."""
        return self.mapper(*(self.input_array(request, name) for name in _INPUTS))
