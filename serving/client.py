"""Calling the `seminar` ensemble over gRPC: one request = one user's candidate rows.

Shared by `seminar bench serving`, the demo and the serving tests (the gateway has its own
client in seminar.clients, with deadlines and A/B arms).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seminar import contract


def request_inputs(user_id: int, query: str, item_ids: Sequence[int] | np.ndarray) -> list:
    """The ensemble's inputs for one user and B candidates: user_id, query, item_id, each (B, 1)."""
    import tritonclient.grpc as grpcclient

    items = np.asarray(item_ids, dtype=np.int64).reshape(-1, 1)  # (B, 1)
    b = items.shape[0]
    user = grpcclient.InferInput(contract.INPUT_USER_ID, [b, 1], "INT64")
    user.set_data_from_numpy(np.full((b, 1), user_id, dtype=np.int64))
    text = grpcclient.InferInput(contract.INPUT_QUERY, [b, 1], "BYTES")
    text.set_data_from_numpy(np.full((b, 1), query.encode("utf-8"), dtype=object))
    item = grpcclient.InferInput(contract.INPUT_ITEM_ID, [b, 1], "INT64")
    item.set_data_from_numpy(items)
    return [user, text, item]


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
