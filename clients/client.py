"""Client library: rank through the gateway, or send the same request straight to Triton.

from seminar.clients.client import rank_via_gateway, rank_direct
r = rank_via_gateway("127.0.0.1:50051", "42", "space opera", [1, 2, 3])
d = rank_direct("127.0.0.1:8001", "seminar_v1", 1, "42", "space opera", [1, 2, 3])
assert r.item_ids == d.item_ids   # the gateway adds routing, never changes scores
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import grpc
import numpy as np

from seminar.clients.proto import ranker_pb2, ranker_pb2_grpc
from seminar.clients.scoring import TRITON_CHANNEL_ARGS, CallFailed, rank, score_async
from seminar.errors import UsageError
from seminar.events import Event


@dataclass(frozen=True)
class RankResult:
    item_ids: list[int]  # best first
    scores: list[float]
    arm: str  # "" for a direct Triton call
    model_version: str  # "<model>:<version>"
    request_id: str = ""  # the gateway's name of this ranking; "" for a direct Triton call

    def to_dict(self) -> dict:
        return asdict(self)


def rank_via_gateway(
    address: str, user_id: str, query: str, candidate_ids: list[int], timeout_s: float = 5.0
) -> RankResult:
    """One seminar.v1.Ranker/Rank call; raises CallFailed with the gRPC status."""
    with grpc.insecure_channel(address) as channel:
        stub = ranker_pb2_grpc.RankerStub(channel)
        request = ranker_pb2.RankRequest(user_id=user_id, query=query, candidate_ids=candidate_ids)
        try:
            response = stub.Rank(request, timeout=timeout_s)
        except grpc.RpcError as err:
            raise CallFailed(err.code().name, err.details() or "") from None
    return RankResult(
        list(response.item_ids),
        list(response.scores),
        response.arm,
        response.model_version,
        response.request_id,
    )


def record_via_gateway(
    address: str, events: Sequence[Event], timeout_s: float = 10.0
) -> ranker_pb2.RecordResponse:
    """One seminar.v1.Events/Record call with `events`; raises CallFailed with the gRPC status.
    Returned, the events are durable in the gateway's event log."""
    from seminar.clients.record_load import event_message

    with grpc.insecure_channel(address) as channel:
        stub = ranker_pb2_grpc.EventsStub(channel)
        request = ranker_pb2.RecordRequest(events=[event_message(event) for event in events])
        try:
            return stub.Record(request, timeout=timeout_s)
        except grpc.RpcError as err:
            raise CallFailed(err.code().name, err.details() or "") from None


def rank_direct(
    address: str,
    model: str,
    version: int,
    user_id: str,
    query: str,
    candidate_ids: list[int],
    timeout_s: float = 5.0,
) -> RankResult:
    """The same ranking computed by calling Triton's `model` (version 0 = Triton's default)."""
    import asyncio

    import tritonclient.grpc.aio as triton_aio

    try:
        uid = int(user_id)
    except ValueError:
        raise UsageError(f"user id must be an integer, got {user_id!r}") from None
    ids = np.asarray(candidate_ids, dtype=np.int64)

    async def call() -> np.ndarray:
        client = triton_aio.InferenceServerClient(address, channel_args=TRITON_CHANNEL_ARGS)
        try:
            return await score_async(
                client, model, version or "", uid, query, ids, client_timeout_s=timeout_s
            )
        finally:
            await client.close()

    scores = asyncio.run(call())
    item_ids, sorted_scores = rank(ids, scores)
    return RankResult(
        item_ids.tolist(), sorted_scores.tolist(), "", f"{model}:{version or 'default'}"
    )


def same_ranking(served: RankResult, reference: RankResult, rtol: float = 1e-5) -> str | None:
    """None when both score the same items equally, else a sentence saying where they differ.

    Scores are compared per item: dynamic batching can merge a request with others, which
    changes float summation order only (hence rtol, not bit equality).
    """
    if sorted(served.item_ids) != sorted(reference.item_ids):
        return "different item sets"
    ref = dict(zip(reference.item_ids, reference.scores, strict=True))
    for item, score in zip(served.item_ids, served.scores, strict=True):
        if not np.isclose(score, ref[item], rtol=rtol, atol=1e-6):
            return f"item {item}: served {score:.7g}, Triton {ref[item]:.7g}"
    return None
