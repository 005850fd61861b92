"""The request tensors of the `seminar` ensemble, built once: one request = one user's
candidate rows, per row `user_id` INT64 [1], `query` BYTES [1], `item_id` INT64 [1].

Every caller builds them here: the gateway (seminar.clients.scoring), the in-process pipeline,
`seminar bench serving` and perf_analyzer's input data, the demo and the tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from seminar import contract


def request_arrays(
    user_id: int, query: str | bytes, item_ids: Sequence[int] | np.ndarray
) -> dict[str, np.ndarray]:
    """The ensemble's inputs for one user and B candidates, each (B, 1), by input name."""
    items = np.asarray(item_ids, dtype=np.int64).reshape(-1, 1)  # (B, 1)
    rows = items.shape[0]
    text = query if isinstance(query, bytes) else query.encode("utf-8")
    return {
        contract.INPUT_USER_ID: np.full((rows, 1), user_id, dtype=np.int64),  # (B, 1)
        contract.INPUT_QUERY: np.full((rows, 1), text, dtype=object),  # (B, 1) bytes
        contract.INPUT_ITEM_ID: items,
    }


def request_rows(
    user_id: int, query: str, item_ids: Sequence[int] | np.ndarray
) -> list[dict[str, list]]:
    """The same request as JSON rows, one per candidate (perf_analyzer's --input-data)."""
    arrays = request_arrays(user_id, query, item_ids)
    columns = {
        name: [v.decode("utf-8") if isinstance(v, bytes) else v for v in array[:, 0].tolist()]
        for name, array in arrays.items()
    }
    return [
        {name: [column[row]] for name, column in columns.items()}
        for row in range(len(arrays[contract.INPUT_ITEM_ID]))
    ]


def infer_inputs(arrays: Mapping[str, np.ndarray]) -> list:
    """tritonclient.grpc InferInputs of named arrays; each datatype follows its numpy dtype
    (int64 -> INT64, float32 -> FP32, object -> BYTES, ...)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def request_inputs(user_id: int, query: str | bytes, item_ids: Sequence[int] | np.ndarray) -> list:
    """`request_arrays` as tritonclient.grpc InferInputs."""
    return infer_inputs(request_arrays(user_id, query, item_ids))


def score(
    client,
    user_id: int,
    query: str,
    item_ids: Sequence[int] | np.ndarray,
    model: str = contract.ENSEMBLE_MODEL,
    version: str = "",
    timeout_s: float | None = None,
) -> np.ndarray:
    """Scores (B,) float32 of `item_ids` for one user from a running server.

    `client` is a `tritonclient.grpc.InferenceServerClient`; errors surface as its
    `InferenceServerException` with Triton's status and message.
    """
    import tritonclient.grpc as grpcclient

    result = client.infer(
        model,
        request_inputs(user_id, query, item_ids),
        model_version=version,
        outputs=[grpcclient.InferRequestedOutput(contract.OUTPUT_SCORE)],
        client_timeout=timeout_s,
    )
    return result.as_numpy(contract.OUTPUT_SCORE).reshape(-1)  # (B, 1) -> (B,)
