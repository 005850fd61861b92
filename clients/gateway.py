"""`seminar.v1.Ranker` gateway: validation, A/B routing to Triton, shadow calls, metrics.

One request flows as:

    RankRequest -> validate (user id, query size, candidates vs limits and catalog)
                -> arm = config.assign(user_id)          (pure function of salt + weights)
                -> Triton infer on (arm.model, arm.version) with a deadline
                -> sort by score, best first -> RankResponse(arm, model_version)
                -> shadow arm (if any) scored in a background task, compared, metered, dropped

The experiment config is an immutable object held in one attribute. A reload (file change,
polled, or SIGHUP) builds a new object and swaps the reference; requests in flight keep the
object they started with. A config that fails validation is logged and the old one stays.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from seminar.clients.catalog import Catalog
from seminar.clients.config import ConfigError, ExperimentConfig, load_config
from seminar.clients.metrics import GatewayMetrics
from seminar.clients.proto import ranker_pb2, ranker_pb2_grpc
from seminar.clients.scoring import TRITON_CHANNEL_ARGS, TritonError, rank, score_async, spearman

from seminar.constants import AB_BUCKETS, GATEWAY_SERVICE

log = logging.getLogger("seminar.gateway")

INT64_MAX = 2**63 - 1
CONFIG_POLL_S = 0.2  # a weight change takes effect within this (the test asks for < 1 s)
SHADOW_WARN_EVERY_S = 10.0

# Triton failures the client can act on keep their code; anything else is the gateway's fault.
_PASS_THROUGH = {
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "DEADLINE_EXCEEDED": grpc.StatusCode.DEADLINE_EXCEEDED,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "CANCELLED": grpc.StatusCode.CANCELLED,
}


class RequestError(ValueError):
    """A request the gateway refuses with INVALID_ARGUMENT; the message says which field."""


@dataclass(frozen=True)
class ValidRequest:
    user_id: int
    query: str
    candidate_ids: np.ndarray  # (B,) int64


def validate(
    request: ranker_pb2.RankRequest, config: ExperimentConfig, catalog: Catalog | None
) -> ValidRequest:
    """Check a RankRequest against the limits and the catalog; raise RequestError."""
    raw_user = request.user_id.strip()
    if not raw_user.isdecimal() or not raw_user.isascii() or int(raw_user) > INT64_MAX:
        raise RequestError(
            f"user_id must be a non-negative decimal integer below 2^63, got {request.user_id!r}"
        )
    query_bytes = len(request.query.encode())
    if query_bytes > config.limits.max_query_bytes:
        raise RequestError(
            f"query is {query_bytes} bytes, over the limit of {config.limits.max_query_bytes}"
        )
    n = len(request.candidate_ids)
    if n == 0:
        raise RequestError("candidate_ids is empty: send at least one item id to rank")
    if n > config.limits.max_candidates:
        raise RequestError(
            f"candidate_ids has {n} ids, over the limit of {config.limits.max_candidates}"
        )
    candidates = np.fromiter(request.candidate_ids, dtype=np.int64, count=n)
    if catalog is not None:
        unknown = catalog.unknown(candidates)
        if len(unknown):
            shown = ", ".join(str(i) for i in unknown[:5])
            more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
            raise RequestError(f"candidate_ids holds unknown item id(s) {shown}{more}")
    return ValidRequest(int(raw_user), request.query, candidates)


class RankerService(ranker_pb2_grpc.RankerServicer):
    """The Rank RPC. Holds the current config, the Triton client, metrics and shadow tasks."""

    def __init__(
        self,
        config_path: Path,
        triton_url: str,
        catalog: Catalog | None,
        metrics: GatewayMetrics,
    ) -> None:
        import tritonclient.grpc.aio as triton_aio

        self.config_path = config_path
        self.catalog = catalog
        self.metrics = metrics
        self.config: ExperimentConfig = load_config(config_path)  # raises ConfigError
        self._config_stamp = _stamp(config_path)
        self._publish_shares(self.config)
        self.triton = triton_aio.InferenceServerClient(triton_url, channel_args=TRITON_CHANNEL_ARGS)
        self._shadow_tasks: set[asyncio.Task] = set()
        self._shadow_warned_at = -float("inf")

    async def Rank(
        self, request: ranker_pb2.RankRequest, context: grpc.aio.ServicerContext
    ) -> ranker_pb2.RankResponse:
        config = self.config  # one snapshot for the whole request
        start = time.perf_counter()
        arm_label, version_label, code = "", "", grpc.StatusCode.OK
        try:
            try:
                valid = validate(request, config, self.catalog)
            except RequestError as err:
                code = grpc.StatusCode.INVALID_ARGUMENT
                await context.abort(code, str(err))
            arm = config.assign(str(valid.user_id))
            arm_label, version_label = arm.name, arm.model_version
            timeout_s = config.limits.deadline_ms / 1000
            remaining = context.time_remaining()
            if remaining is not None:
                timeout_s = max(min(timeout_s, remaining), 0.001)
            try:
                t0 = time.perf_counter()
                scores = await score_async(
                    self.triton, arm.model, arm.version, valid.user_id, valid.query,
                    valid.candidate_ids, timeout_s,
                )  # fmt: skip
            except TritonError as err:
                code = _PASS_THROUGH.get(err.code, grpc.StatusCode.INTERNAL)
                await context.abort(code, f"Triton {arm.model_version}: {err}")
            finally:
                self.metrics.triton_latency.labels(arm.name, arm.model_version, "primary").observe(
                    time.perf_counter() - t0
                )
            if config.shadow is not None:
                self._start_shadow(config, valid, scores)
            item_ids, sorted_scores = rank(valid.candidate_ids, scores)
            return ranker_pb2.RankResponse(
                item_ids=item_ids.tolist(),
                scores=sorted_scores.tolist(),
                arm=arm.name,
                model_version=arm.model_version,
            )
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self.metrics.requests.labels(arm_label, version_label, code.name).inc()
            self.metrics.latency.labels(arm_label, version_label).observe(
                time.perf_counter() - start
            )

    def _start_shadow(
        self, config: ExperimentConfig, valid: ValidRequest, primary: np.ndarray
    ) -> None:
        task = asyncio.create_task(self._shadow(config, valid, primary))
        self._shadow_tasks.add(task)  # keep a reference until done, or the task may vanish
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(
        self, config: ExperimentConfig, valid: ValidRequest, primary: np.ndarray
    ) -> None:
        """Score with the shadow arm and compare; every failure ends here, logged and counted."""
        shadow = config.shadow
        assert shadow is not None
        t0 = time.perf_counter()
        try:
            scores = await score_async(
                self.triton, shadow.model, shadow.version, valid.user_id, valid.query,
                valid.candidate_ids, config.limits.deadline_ms / 1000,
            )  # fmt: skip
        except TritonError as err:
            self.metrics.shadow_requests.labels(shadow.name, shadow.model_version, err.code).inc()
            log.warning(
                "shadow %s failed for user %d: %s", shadow.model_version, valid.user_id, err
            )
            return
        except Exception as err:  # a shadow bug must never reach a caller
            self.metrics.shadow_requests.labels(shadow.name, shadow.model_version, "INTERNAL").inc()
            log.exception("shadow %s crashed: %s", shadow.model_version, err)
            return
        finally:
            self.metrics.triton_latency.labels(shadow.name, shadow.model_version, "shadow").observe(
                time.perf_counter() - t0
            )
        agreement = spearman(primary, scores)
        self.metrics.shadow_requests.labels(shadow.name, shadow.model_version, "OK").inc()
        self.metrics.shadow_agreement.labels(shadow.name, shadow.model_version).observe(agreement)
        log.debug(
            "shadow %s user=%d candidates=%d spearman=%.3f",
            shadow.model_version, valid.user_id, len(scores), agreement,
        )  # fmt: skip

    # ---- config reload -------------------------------------------------------------------

    def reload(self, reason: str) -> bool:
        """Load the config file again; swap it in if valid, else keep the old one and log why."""
        self._config_stamp = _stamp(self.config_path)
        try:
            new = load_config(self.config_path)
        except ConfigError as err:
            self.metrics.config_reloads.labels("rejected").inc()
            log.error("config reload (%s) rejected, keeping the previous config: %s", reason, err)
            return False
        self.config = new  # atomic reference swap; in-flight requests hold the old object
        self._publish_shares(new)
        self.metrics.config_reloads.labels("applied").inc()
        arms = ", ".join(f"{a.name}={a.model_version}@{a.weight:g}" for a in new.arms)
        log.info("config reload (%s) applied: salt=%s arms: %s", reason, new.salt, arms)
        return True

    async def watch_config(self) -> None:
        """Poll the file's (mtime, size, inode); an atomic rename counts as a change."""
        while True:
            await asyncio.sleep(CONFIG_POLL_S)
            if _stamp(self.config_path) != self._config_stamp:
                self.reload("file changed")

    def _publish_shares(self, config: ExperimentConfig) -> None:
        self.metrics.arm_share.clear()
        start = 0
        for arm, end in zip(config.arms, config.bucket_ends, strict=True):
            self.metrics.arm_share.labels(arm.name, arm.model_version).set(
                (end - start) / AB_BUCKETS
            )
            start = end

    async def close(self) -> None:
        if self._shadow_tasks:
            await asyncio.wait(self._shadow_tasks, timeout=2)
        await self.triton.close()


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


async def serve(
    config_path: Path,
    triton_url: str,
    port: int,
    metrics_port: int | None,
    catalog: Catalog | None,
    host: str = "127.0.0.1",
    ready: asyncio.Event | None = None,
) -> None:
    """Run the gateway until SIGINT/SIGTERM; SIGHUP reloads the config.

    Raises ConfigError for an invalid initial config and OSError when a port is taken.
    """
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection
    from prometheus_client import start_http_server

    metrics = GatewayMetrics()
    service = RankerService(config_path, triton_url, catalog, metrics)
    # No SO_REUSEPORT: a second gateway on a taken port must fail, not silently share it.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    ranker_pb2_grpc.add_RankerServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (GATEWAY_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as err:  # grpcio raises on a taken port, older versions return 0
        raise OSError(f"cannot bind the gateway to {address}: {err}") from err
    if bound == 0:
        raise OSError(f"cannot bind the gateway to {address}")
    http_server = None
    if metrics_port is not None:
        http_server, _ = start_http_server(metrics_port, addr=host, registry=metrics.registry)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, service.reload, "SIGHUP")

    await server.start()
    for name in ("", GATEWAY_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    watcher = asyncio.create_task(service.watch_config())
    log.info(
        "gateway on %s -> Triton %s, metrics on %s, config %s, catalog %s",
        address, triton_url, metrics_port, config_path,
        f"{len(catalog)} items" if catalog else "off",
    )  # fmt: skip
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("gateway stopping: draining in-flight requests")
        for name in ("", GATEWAY_SERVICE):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        watcher.cancel()
        await server.stop(grace=5)
        await service.close()
        if http_server is not None:
            http_server.shutdown()
