"""`seminar.v1.Ranker` gateway: validation, A/B routing to Triton, shadow calls, metrics.

One request flows as:

    RankRequest -> validate (user id, query size, candidates vs limits and catalog)
                -> arm = config.assign(user_id)          (pure function of salt + weights)
                -> refused at once if the arm is not READY in Triton (UNAVAILABLE) or if
                   limits.max_inflight Triton calls are outstanding (RESOURCE_EXHAUSTED)
                -> Triton infer on (arm.model, arm.version), awaited within the budget
                -> sort by score, best first -> RankResponse(arm, model_version, request_id)
                -> shadow arm (if any) scored in a background task, compared, metered, dropped

Budget, and why no Triton call is ever cancelled. A request's budget is min(limits.deadline_ms,
the client's remaining deadline). tritonserver 2.51 can crash when an inference call is
cancelled inside it (seminar.clients.triton_calls), so the call carries no gRPC deadline and
nothing cancels it: the gateway waits for it through asyncio.shield and, when the budget ends
first, answers DEADLINE_EXCEEDED while the call finishes inside Triton, its result dropped and
counted. Triton's own per-request queue timeout is no way out: a request rejected from one
step's queue while a sibling step still works on it crashes 2.51 as well, so the models have
no queue policy. What bounds the work abandoned in Triton is `limits.max_inflight`.

Readiness. Every arm and the shadow are checked with Triton's ModelReady at start, on every
reload and every READY_POLL_S. A reload that names a weighted arm or a shadow that is not READY
is rejected. A live arm that turns unready gets UNAVAILABLE at once, without a Triton call, and
the health status ("" and seminar.v1.Ranker) is SERVING only while Triton answers and every
weighted arm is READY ("liveness" is SERVING while the process runs). The gateway starts when
Triton is not up yet (only the initial config's syntax is checked then): it reports
NOT_SERVING until the arms are READY.

The experiment config is an immutable object held in one attribute. A reload (file change,
polled, or SIGHUP) builds a new object and swaps the reference; requests in flight keep the
object they started with. A config that fails validation is logged and the old one stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from seminar.clients.attribution import new_request_id
from seminar.clients.catalog import Catalog
from seminar.clients.config import Arm, ExperimentConfig, load_config
from seminar.clients.metrics import GatewayMetrics
from seminar.clients.proto import ranker_pb2, ranker_pb2_grpc
from seminar.clients.readiness import NOT_CHECKED, ModelKey, Readiness, ReadinessProbe
from seminar.clients.scoring import TRITON_CHANNEL_ARGS, CallFailed, rank, score_async, spearman
from seminar.clients.triton_calls import Overloaded, TritonCalls
from seminar.contract import EVENTS_SERVICE, GATEWAY_SERVICE
from seminar.errors import DataError, UsageError

if TYPE_CHECKING:
    from grpc_health.v1.health import aio as health_aio

    from seminar.events import EventLog

log = logging.getLogger("seminar.gateway")

INT64_MAX = 2**63 - 1
INT64_MAX_DIGITS = len(str(INT64_MAX))  # longer user ids are refused before int() sees them
CONFIG_POLL_S = 0.2  # a weight change takes effect within this (the test asks for < 1 s)
SHADOW_WARN_EVERY_S = 10.0
READY_POLL_S = 2.0  # readiness probe period while every weighted arm is READY
UNREADY_POLL_S = 0.5  # faster while one is not, so a recovered arm serves within a second
PROBE_WAIT_S = 2.0  # a ModelReady answer slower than this counts as "Triton did not answer"
# Answer this long before the client's own deadline, so the client gets the gateway's
# DEADLINE_EXCEEDED with its message rather than its own timeout.
REPLY_MARGIN_S = 0.002
# A cancellation this close to the client's deadline is metered as that deadline passing.
DEADLINE_TOLERANCE_S = 0.01
# On shutdown, outstanding Triton calls get this long to finish before the channel is closed
# (closing it would cancel them inside Triton).
DRAIN_S = 5.0
# A grpc.health.v1 name that is SERVING while the process runs, whatever Triton's state: for
# liveness probes, since restarting the gateway never brings an arm back ("" and
# seminar.v1.Ranker are for readiness: they say whether requests can be served).
LIVENESS_SERVICE = "liveness"

# Triton failures the client can act on keep their code; anything else is the gateway's fault.
_PASS_THROUGH = {
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "DEADLINE_EXCEEDED": grpc.StatusCode.DEADLINE_EXCEEDED,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "CANCELLED": grpc.StatusCode.CANCELLED,
}


class Refusal(Exception):
    """A request the gateway answers with a non-OK status; `message` goes to the client.

    Not a SeminarError: it never leaves the RPC handler (Rank, or Record in
    seminar.clients.events), which turns it into the gRPC status of the answer, so no user of
    the `seminar` command ever meets it."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


def bug_message(err: Exception) -> str:
    """The one line an INTERNAL answer carries for an unexpected exception in a handler."""
    detail = (str(err).splitlines() or [""])[0][:200]
    return f"gateway error: {type(err).__name__}: {detail}"


@dataclass(frozen=True)
class ValidRequest:
    user_id: int
    query: str
    candidate_ids: np.ndarray  # (B,) int64


@dataclass(frozen=True)
class MalformedRequest:
    """What the Rank deserializer gives for bytes that do not parse as a RankRequest."""

    error: str
    size: int  # bytes received


def parse_rank_request(raw: bytes) -> ranker_pb2.RankRequest | MalformedRequest:
    """Rank's request deserializer. gRPC's own answer to a deserializer that raises is UNKNOWN
    and a logged traceback per request; a MalformedRequest becomes INVALID_ARGUMENT instead."""
    try:
        return ranker_pb2.RankRequest.FromString(raw)
    except DecodeError as err:
        return MalformedRequest(str(err) or "cannot decode the message", len(raw))


def _shown(text: str, limit: int = 40) -> str:
    """`text` for a message or log line: repr'd, cut to `limit` characters with its length."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def validate(
    request: ranker_pb2.RankRequest, config: ExperimentConfig, catalog: Catalog | None
) -> ValidRequest:
    """Check a RankRequest against the limits and the catalog; a UsageError says which field
    (the gateway answers it with INVALID_ARGUMENT)."""
    raw_user = request.user_id.strip()
    digits = raw_user.lstrip("0") or "0"
    # The length check comes first: int() refuses strings over 4300 digits with a ValueError.
    if (
        not raw_user.isdecimal()
        or not raw_user.isascii()
        or len(digits) > INT64_MAX_DIGITS
        or int(digits) > INT64_MAX
    ):
        raise UsageError(
            "user_id must be a non-negative decimal integer below 2^63, "
            f"got {_shown(request.user_id)}"
        )
    query_bytes = len(request.query.encode())
    if query_bytes > config.limits.max_query_bytes:
        raise UsageError(
            f"query is {query_bytes} bytes, over the limit of {config.limits.max_query_bytes}"
        )
    n = len(request.candidate_ids)
    if n == 0:
        raise UsageError("candidate_ids is empty: send at least one item id to rank")
    if n > config.limits.max_candidates:
        raise UsageError(
            f"candidate_ids has {n} ids, over the limit of {config.limits.max_candidates}"
        )
    candidates = np.fromiter(request.candidate_ids, dtype=np.int64, count=n)
    if catalog is not None:
        unknown = catalog.unknown(candidates)
        if len(unknown):
            shown = ", ".join(str(i) for i in unknown[:5])
            more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
            raise UsageError(f"candidate_ids holds unknown item id(s) {shown}{more}")
    return ValidRequest(int(digits), request.query, candidates)


def model_keys(config: ExperimentConfig) -> set[ModelKey]:
    """Every (model, version) the config names: all arms, weight 0 included, and the shadow."""
    arms = [*config.arms, *([config.shadow] if config.shadow else [])]
    return {(arm.model, arm.version) for arm in arms}


def required_arms(config: ExperimentConfig) -> list[Arm]:
    """The arms a reload needs READY: those with traffic, and the shadow."""
    arms = [arm for arm in config.arms if arm.weight > 0]
    return arms + ([config.shadow] if config.shadow else [])


@dataclass
class _Labels:
    arm: str = ""  # "" until the request is assigned to an arm
    model_version: str = ""


class RankerService(ranker_pb2_grpc.RankerServicer):
    """The Rank RPC. Holds the current config, the Triton client, readiness, metrics, and the
    Triton calls in flight."""

    def __init__(
        self,
        config_path: Path,
        triton_url: str,
        catalog: Catalog | None,
        metrics: GatewayMetrics,
        health: health_aio.HealthServicer | None = None,
    ) -> None:
        import tritonclient.grpc.aio as triton_aio

        self.config_path = config_path
        self.catalog = catalog
        self.metrics = metrics
        self.health = health
        self.config: ExperimentConfig = load_config(config_path)  # raises UsageError
        self._config_stamp = _stamp(config_path)
        self._publish_shares(self.config)
        metrics.publish_arms(self.config.arms)
        self.triton = triton_aio.InferenceServerClient(triton_url, channel_args=TRITON_CHANNEL_ARGS)
        self.calls = TritonCalls(metrics)
        self.probe = ReadinessProbe(self.triton)
        self.readiness: Readiness = NOT_CHECKED
        self.serving: bool | None = None  # the health status last published; None = none yet
        self._arm_ready: dict[tuple[str, str], bool] = {}  # (arm, model_version) -> last state
        self._reload_lock = asyncio.Lock()
        self._probe_now = asyncio.Event()
        self._background: set[asyncio.Task] = set()  # shadow calls and SIGHUP reloads
        self._shadow_warned_at = -float("inf")
        self._shadow_failures_unlogged = 0

    # ---- the Rank RPC ----------------------------------------------------------------------

    async def Rank(
        self,
        request: ranker_pb2.RankRequest | MalformedRequest,
        context: grpc.aio.ServicerContext,
    ) -> ranker_pb2.RankResponse:
        config = self.config  # one snapshot for the whole request
        start = time.perf_counter()
        labels = _Labels()
        code, message = grpc.StatusCode.OK, ""
        try:
            return await self._rank(request, context, config, labels)
        except Refusal as refusal:
            code, message = refusal.code, refusal.message
        except asyncio.CancelledError:
            # gRPC cancels the handler when the client cancels or its deadline passes; the
            # client sees DEADLINE_EXCEEDED in the second case, so that is what is metered. The
            # client's own deadline passes a little before the gateway's copy of it (the request
            # took time to arrive), hence the tolerance.
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= DEADLINE_TOLERANCE_S
            code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            raise
        except Exception as err:  # a gateway bug: INTERNAL with one line, never UNKNOWN or OK
            code, message = grpc.StatusCode.INTERNAL, bug_message(err)
            log.error("Rank failed for arm %r: %s", labels.arm, message)
        finally:
            self.metrics.requests.labels(labels.arm, labels.model_version, code.name).inc()
            self.metrics.latency.labels(labels.arm, labels.model_version).observe(
                time.perf_counter() - start
            )
        await context.abort(code, message)

    async def _rank(
        self,
        request: ranker_pb2.RankRequest | MalformedRequest,
        context: grpc.aio.ServicerContext,
        config: ExperimentConfig,
        labels: _Labels,
    ) -> ranker_pb2.RankResponse:
        if isinstance(request, MalformedRequest):
            log.warning(
                "Rank: refused %d bytes that are not a RankRequest: %s", request.size, request.error
            )
            raise Refusal(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request is not a valid seminar.v1.RankRequest: {request.error}",
            )
        try:
            valid = validate(request, config, self.catalog)
        except UsageError as err:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None
        arm = config.assign(str(valid.user_id))
        labels.arm, labels.model_version = arm.name, arm.model_version
        # Read in the same event-loop step as `config`: a reload swaps config and readiness
        # together, so this readiness always covers this config's arms.
        readiness = self.readiness
        if not readiness.is_ready(arm.model, arm.version):
            raise Refusal(
                grpc.StatusCode.UNAVAILABLE,
                f"arm {arm.name}: {arm.model_version} is not READY in Triton "
                f"({readiness.reason(arm.model, arm.version)}); the request was not sent",
            )
        budget_s = config.limits.deadline_ms / 1000
        remaining = context.time_remaining()
        if remaining is not None:
            budget_s = min(budget_s, remaining - REPLY_MARGIN_S)
        if budget_s <= 0:
            raise Refusal(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "the client's deadline left no time to call Triton",
            )
        scores = await self._score(arm, valid, budget_s, "primary", config.limits.max_inflight)
        if config.shadow is not None:
            self._start_shadow(config, arm, valid, scores)
        item_ids, sorted_scores = rank(valid.candidate_ids, scores)
        return ranker_pb2.RankResponse(
            item_ids=item_ids.tolist(),
            scores=sorted_scores.tolist(),
            arm=arm.name,
            model_version=arm.model_version,
            request_id=new_request_id(arm.name, arm.model, arm.version),
        )

    async def _score(
        self, arm: Arm, valid: ValidRequest, budget_s: float, role: str, limit: int
    ) -> np.ndarray:
        """Scores from Triton within `budget_s`; every failure is raised as a Refusal."""

        def call() -> Coroutine[Any, Any, np.ndarray]:
            return score_async(
                self.triton, arm.model, arm.version, valid.user_id, valid.query,
                valid.candidate_ids,
            )  # fmt: skip

        try:
            task = self.calls.start(call, arm.name, arm.model_version, role, limit)
        except Overloaded as err:
            raise Refusal(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"gateway overloaded: {err.outstanding} Triton calls in flight "
                f"(limits.max_inflight = {err.limit})",
            ) from None
        t0 = time.perf_counter()
        try:
            return await self.calls.wait(task, budget_s)
        except TimeoutError:
            raise Refusal(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"Triton {arm.model_version} did not answer within the budget of "
                f"{budget_s * 1000:.0f} ms; the call finishes in Triton and its result is dropped",
            ) from None
        except CallFailed as err:
            raise self._triton_refusal(arm, err) from None
        finally:
            self.metrics.triton_latency.labels(arm.name, arm.model_version, role).observe(
                time.perf_counter() - t0
            )

    def _triton_refusal(self, arm: Arm, err: CallFailed) -> Refusal:
        if err.code not in ("DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"):
            self._probe_now.set()  # the arm may have gone unready: check now, not at the next poll
        return Refusal(
            _PASS_THROUGH.get(err.code, grpc.StatusCode.INTERNAL),
            f"Triton {arm.model_version}: {err}",
        )

    # ---- shadow arm ------------------------------------------------------------------------

    def _start_shadow(
        self, config: ExperimentConfig, arm: Arm, valid: ValidRequest, primary: np.ndarray
    ) -> None:
        shadow = config.shadow
        assert shadow is not None
        if not self.readiness.is_ready(shadow.model, shadow.version):
            reason = self.readiness.reason(shadow.model, shadow.version)
            self._shadow_failed(shadow, "UNAVAILABLE", f"not READY in Triton ({reason})")
            return
        self._spawn(self._shadow(config, arm, valid, primary))

    async def _shadow(
        self, config: ExperimentConfig, arm: Arm, valid: ValidRequest, primary: np.ndarray
    ) -> None:
        """Score with the shadow arm and compare with `arm`'s scores (`primary`); every
        failure ends here, logged and counted."""
        shadow = config.shadow
        assert shadow is not None
        try:
            # Shadow traffic must never take the capacity primaries need: it is refused once
            # half of limits.max_inflight is in flight.
            scores = await self._score(
                shadow, valid, config.limits.deadline_ms / 1000, "shadow",
                config.limits.max_inflight // 2,
            )  # fmt: skip
        except Refusal as refusal:
            self._shadow_failed(shadow, refusal.code.name, refusal.message)
            return
        except Exception as err:  # a shadow bug must never reach a caller
            self._shadow_failed(shadow, "INTERNAL", f"{type(err).__name__}: {err}")
            return
        self.metrics.shadow_requests.labels(shadow.name, shadow.model_version, "OK").inc()
        if (arm.model, arm.version) == (shadow.model, shadow.version):
            # A shadow that serves this request's own arm agrees with it by definition (1.0):
            # averaging that in would hide how far the shadow is from the other arms.
            return
        agreement = spearman(primary, scores)
        self.metrics.shadow_agreement.labels(shadow.name, shadow.model_version).observe(agreement)
        log.debug(
            "shadow %s user=%d candidates=%d spearman=%.3f",
            shadow.model_version, valid.user_id, len(scores), agreement,
        )  # fmt: skip

    def _shadow_failed(self, shadow: Arm, code: str, message: str) -> None:
        """Count a failed shadow call; log at most one line per SHADOW_WARN_EVERY_S."""
        self.metrics.shadow_requests.labels(shadow.name, shadow.model_version, code).inc()
        now = time.monotonic()
        if now - self._shadow_warned_at < SHADOW_WARN_EVERY_S:
            self._shadow_failures_unlogged += 1
            return
        also = (
            f" ({self._shadow_failures_unlogged} more since the last warning)"
            if self._shadow_failures_unlogged
            else ""
        )
        log.warning("shadow %s failed: %s: %s%s", shadow.model_version, code, message, also)
        self._shadow_warned_at, self._shadow_failures_unlogged = now, 0

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)  # keep a reference until done, or the task may vanish
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            err = task.exception()
            log.error("background task failed: %s: %s", type(err).__name__, err)

    # ---- readiness and health --------------------------------------------------------------

    async def refresh_readiness(self) -> None:
        """Probe every arm of the live config and publish the result (gauges, health)."""
        config = self.config
        readiness = await self.probe.check(model_keys(config), PROBE_WAIT_S)
        if config is self.config:  # else a reload swapped it meanwhile, with a newer probe
            await self._apply_readiness(config, readiness)

    async def watch_triton(self) -> None:
        """Probe every READY_POLL_S, faster while an arm is unready, at once when poked."""
        while True:
            try:
                await self.refresh_readiness()
            except Exception as err:  # the watcher must outlive any one failed round
                log.error("readiness check failed: %s: %s", type(err).__name__, err)
            period = READY_POLL_S if self.serving else UNREADY_POLL_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._probe_now.wait(), period)
            self._probe_now.clear()

    async def _apply_readiness(self, config: ExperimentConfig, readiness: Readiness) -> None:
        self.readiness = readiness  # first, in the same step as any config swap before it
        self.metrics.triton_reachable.set(1 if readiness.reachable else 0)
        self.metrics.arm_ready.clear()
        states: dict[tuple[str, str], bool] = {}
        for arm in [*config.arms, *([config.shadow] if config.shadow else [])]:
            ready = readiness.is_ready(arm.model, arm.version)
            self.metrics.arm_ready.labels(arm.name, arm.model_version).set(1 if ready else 0)
            states[(arm.name, arm.model_version)] = ready
            if self._arm_ready.get((arm.name, arm.model_version)) != ready:
                if ready:
                    log.info("arm %s (%s) is READY in Triton", arm.name, arm.model_version)
                else:
                    log.warning(
                        "arm %s (%s) is not READY in Triton (%s); its requests get UNAVAILABLE",
                        arm.name, arm.model_version, readiness.reason(arm.model, arm.version),
                    )  # fmt: skip
        self._arm_ready = states
        serving = all(readiness.is_ready(a.model, a.version) for a in config.arms if a.weight > 0)
        if serving != self.serving:
            self.serving = serving
            await self._set_health(serving)
            log.info("health: %s", "SERVING" if serving else "NOT_SERVING")

    async def _set_health(self, serving: bool) -> None:
        if self.health is None:
            return
        from grpc_health.v1 import health_pb2

        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", GATEWAY_SERVICE):
            await self.health.set(name, status)

    # ---- config reload -------------------------------------------------------------------

    async def reload(self, reason: str) -> bool:
        """Load the config file again; swap it in if valid and its arms are READY in Triton,
        else keep the old one and log why in one line."""
        async with self._reload_lock:
            self._config_stamp = _stamp(self.config_path)
            try:
                new = load_config(self.config_path)
            except UsageError as err:
                self._reject(reason, str(err))
                return False
            readiness = await self.probe.check(model_keys(new), PROBE_WAIT_S)
            unready = [a for a in required_arms(new) if not readiness.is_ready(a.model, a.version)]
            if unready:
                self._reject(
                    reason,
                    "; ".join(
                        f"{'shadow' if a is new.shadow else 'arm'} {a.name} "
                        f"(model {a.model} version {a.version}) is not READY in Triton: "
                        f"{readiness.reason(a.model, a.version)}"
                        for a in unready
                    ),
                )
                return False
            self.config = new  # atomic reference swap; in-flight requests hold the old object
            self._reload_catalog()
            await self._apply_readiness(new, readiness)
            self._publish_shares(new)
            self.metrics.publish_arms(new.arms)
            self.metrics.config_reloads.labels("applied").inc()
            arms = ", ".join(f"{a.name}={a.model_version}@{a.weight:g}" for a in new.arms)
            log.info("config reload (%s) applied: salt=%s arms: %s", reason, new.salt, arms)
            return True

    def _reload_catalog(self) -> None:
        """The catalog from the same place again (module docstring of seminar.clients.catalog);
        one that cannot be read now leaves the old one in use, logged."""
        if self.catalog is None:
            return
        try:
            catalog = self.catalog.reloaded()
        except DataError as err:
            log.error("catalog reload failed, keeping %s: %s", self.catalog.source, err)
            return
        if catalog.source != self.catalog.source or len(catalog) != len(self.catalog):
            log.info(
                "catalog: %d items from %s (was %d from %s)",
                len(catalog), catalog.source, len(self.catalog), self.catalog.source,
            )  # fmt: skip
        self.catalog = catalog

    def request_reload(self, reason: str) -> None:
        """Reload in the background (the SIGHUP handler cannot await)."""
        self._spawn(self.reload(reason))

    def _reject(self, reason: str, why: str) -> None:
        self.metrics.config_reloads.labels("rejected").inc()
        log.error("config reload (%s) rejected, keeping the previous config: %s", reason, why)

    async def watch_config(self) -> None:
        """Poll the file's (mtime, size, inode); an atomic rename counts as a change."""
        while True:
            await asyncio.sleep(CONFIG_POLL_S)
            if _stamp(self.config_path) != self._config_stamp:
                try:
                    await self.reload("file changed")
                except Exception as err:  # the watcher must outlive any one failed reload
                    log.error("config reload failed: %s: %s", type(err).__name__, err)

    def _publish_shares(self, config: ExperimentConfig) -> None:
        self.metrics.arm_share.clear()
        shares = config.shares()
        for arm in config.arms:
            self.metrics.arm_share.labels(arm.name, arm.model_version).set(shares[arm.name])

    async def close(self) -> None:
        """Wait (at most DRAIN_S) for shadow work and outstanding Triton calls, then close the
        channel: closing it cancels whatever still runs in it, which is what must not happen."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_S
        if self._background:
            await asyncio.wait(set(self._background), timeout=DRAIN_S)
        left = await self.calls.drain(max(deadline - loop.time(), 0.0))
        if left:
            log.warning(
                "%d Triton calls still running after %.0f s; closing the channel", left, DRAIN_S
            )
        await self.probe.wait_idle(max(deadline - loop.time(), 0.0))
        await self.triton.close()


def rank_rpc_handler(service: RankerService) -> grpc.GenericRpcHandler:
    """seminar.v1.Ranker with Rank's request parsed by parse_rank_request."""
    method = grpc.unary_unary_rpc_method_handler(
        service.Rank,
        request_deserializer=parse_rank_request,
        response_serializer=ranker_pb2.RankResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(GATEWAY_SERVICE, {"Rank": method})


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
    event_log: EventLog | None = None,
) -> None:
    """Run the gateway until SIGINT/SIGTERM; SIGHUP reloads the config. With `event_log`, it
    also serves seminar.v1.Events (Record) over that log (seminar.clients.events).

    Raises UsageError for an invalid initial config and OSError when a port is taken. Triton
    need not be up: the gateway reports NOT_SERVING until every weighted arm is READY.
    """
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection
    from prometheus_client import start_http_server

    metrics = GatewayMetrics()
    health_servicer = health.aio.HealthServicer()
    service = RankerService(config_path, triton_url, catalog, metrics, health_servicer)
    # No SO_REUSEPORT: a second gateway on a taken port must fail, not silently share it.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((rank_rpc_handler(service),))
    services = [GATEWAY_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME]
    if event_log is not None:
        from seminar.clients.events import EventsService, record_rpc_handler

        server.add_generic_rpc_handlers((record_rpc_handler(EventsService(event_log, metrics)),))
        services.append(EVENTS_SERVICE)
        # Record needs only the log, not Triton: it is SERVING whatever the arms' state.
        await health_servicer.set(EVENTS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(tuple(services), server)
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
    loop.add_signal_handler(signal.SIGHUP, service.request_reload, "SIGHUP")

    for name in ("", GATEWAY_SERVICE):  # until the first probe says otherwise
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await health_servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    await server.start()
    await service.refresh_readiness()
    triton_watcher = asyncio.create_task(service.watch_triton())
    config_watcher = asyncio.create_task(service.watch_config())
    log.info(
        "gateway on %s -> Triton %s, metrics on %s, config %s, catalog %s, health %s",
        address, triton_url, metrics_port, config_path,
        f"{len(catalog)} items" if catalog else "off",
        "SERVING" if service.serving else "NOT_SERVING",
    )  # fmt: skip
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("gateway stopping: draining in-flight requests")
        config_watcher.cancel()
        triton_watcher.cancel()  # the probes it waits on are tasks of their own and finish
        for name in ("", GATEWAY_SERVICE, LIVENESS_SERVICE, EVENTS_SERVICE):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.stop(grace=5)
        await service.close()
        if http_server is not None:
            http_server.shutdown()
