"""One home for "score these candidates in Triton" from the gateway: scores out, errors as
gRPC status names. The request tensors are seminar.serving.client's (the ensemble contract,
docs/serving.md: one request per user, batch = candidate rows)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from seminar.contract import OUTPUT_SCORE
from seminar.errors import ServiceError
from seminar.serving.client import request_inputs

if TYPE_CHECKING:
    import tritonclient.grpc.aio as triton_aio

# Reconnect fast after Triton comes back: gRPC's default backoff grows to 120 s.
TRITON_CHANNEL_ARGS: list[tuple[str, int | str]] = [
    # Spread calls over every pod behind a headless Service (DNS gives all their addresses).
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]

_STATUS_RE = re.compile(r"StatusCode\.([A-Z_]+)")


class CallFailed(ServiceError):
    """A failed gRPC call to Triton or the gateway: the status name (e.g. "UNAVAILABLE") and
    the server's message. Its own class because the gateway passes some status codes on to
    its callers and `seminar client rank` reports a refused request as a usage error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


async def score_async(
    client: triton_aio.InferenceServerClient,
    model: str,
    version: int | str,  # "" = Triton's default version
    user_id: int,
    query: str,
    candidate_ids: np.ndarray,
    client_timeout_s: float | None = None,
) -> np.ndarray:
    """Scores (B,) float32 of the candidates from Triton's `model` at `version`.

    `client_timeout_s` is a gRPC deadline: when it passes, the call is cancelled inside Triton,
    which tritonserver 2.51's gRPC frontend can crash on under load, so the gateway never sets
    it (see seminar.clients.gateway). Triton's own per-request queue timeout is not used
    either: a request rejected from one step's queue while a sibling step works on it crashes
    tritonserver 2.51 too, so the repository's configs have no queue policy.

    Raises CallFailed with the gRPC status name on any failure, including the deadline.
    """
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    inputs = request_inputs(user_id, query, candidate_ids)
    try:
        result = await client.infer(
            model,
            inputs,
            model_version=str(version),
            outputs=[grpcclient.InferRequestedOutput(OUTPUT_SCORE)],
            client_timeout=client_timeout_s,
        )
    except InferenceServerException as err:
        raise CallFailed(status_name(err), err.message() or str(err)) from err
    scores = result.as_numpy(OUTPUT_SCORE)
    if scores is None or scores.size != len(candidate_ids):
        got = None if scores is None else scores.shape
        raise CallFailed(
            "INTERNAL",
            f"{model}:{version} returned score shape {got} for {len(candidate_ids)} rows",
        )
    return scores.reshape(-1).astype(np.float32)  # (B, 1) -> (B,)


def status_name(err: Exception) -> str:
    """The gRPC status name of a tritonclient error, e.g. "UNAVAILABLE"."""
    status = getattr(err, "status", lambda: None)()
    match = _STATUS_RE.search(str(status or ""))
    if match:
        return match.group(1)
    # tritonclient reports a client-side timeout as "Deadline Exceeded" without a status.
    if "deadline" in str(err).lower():
        return "DEADLINE_EXCEEDED"
    return "UNKNOWN"


def rank(candidate_ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(item_ids, scores) sorted by score, best first; ties keep the request order."""
    order = np.argsort(-scores, kind="stable")
    return np.asarray(candidate_ids)[order], scores[order]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two score vectors over the same candidates (1 = same order)."""
    if len(a) < 2:
        return 1.0
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(np.float64)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(np.float64)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else 1.0
