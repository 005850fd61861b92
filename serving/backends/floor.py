"""Triton Python model `floor`: the cheapest model with the ensemble's inputs and output.

It reads `user_id`, `query`, `item_id` and returns `score` = 0 for every row, so its latency is
what Triton + the Python backend + the client cost before any model work: the floor under the
`seminar` ensemble in `seminar bench serving`.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from seminar.contract import INPUT_ITEM_ID, OUTPUT_SCORE


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import json

        config = json.loads(args["model_config"])
        out = pb_utils.get_output_config_by_name(config, OUTPUT_SCORE)
        self.score_dtype = pb_utils.triton_string_to_numpy(out["data_type"])

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            item = pb_utils.get_input_tensor_by_name(request, INPUT_ITEM_ID).as_numpy()
            score = np.zeros((item.shape[0], 1), dtype=self.score_dtype)  # (B, 1)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(OUTPUT_SCORE, score)]))
        return responses
