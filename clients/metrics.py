"""Prometheus metrics of the gateway, on their own registry and HTTP port.

Latencies are in seconds (Prometheus convention) with buckets from 0.25 ms to 5 s, where a
CPU ensemble call (~1-20 ms) and a durable event append (one fsync, ~1-30 ms) land in the
middle. docker/prometheus/rules.yml turns Rank's into p50/p99 by arm.

Record (seminar.v1.Events, served only with `--event-log`) has its own family,
`seminar_gateway_record_*` and `seminar_gateway_events_recorded_total`; the log's kind is the
`kind` label of `seminar_gateway_event_log_info`.

A/B outcomes: `seminar_gateway_impressions_total` and `seminar_gateway_clicks_total` by the
arm and model version that served the ranking a recorded event's request_id names
(seminar.clients.attribution). An impression is an IMPRESSION event or a clicked event (a
click was shown too); a click is a clicked event. Only newly stored events count (a retry's
duplicates do not), and events without a parseable request_id are not attributed. Both start
at 0 for every configured arm, at start and on every reload, so a CTR ratio exists at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

if TYPE_CHECKING:
    from seminar.clients.config import Arm

LATENCY_BUCKETS = (
    0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
    0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
AGREEMENT_BUCKETS = (-0.5, 0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


# What became of each event of a Record call (`outcome` label of events_recorded).
EVENT_OUTCOMES = ("stored", "duplicate", "rejected")
# The codes a Rank request can end with once it is assigned to an arm (refusals before that,
# INVALID_ARGUMENT, carry arm=""). Each configured arm starts with all of them at 0, so that
# an error ratio over them reads 0, not "no data", until the first error.
ARM_CODES = (
    "OK", "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED", "INTERNAL",
)  # fmt: skip
# The codes a Record call can end with (seminar.clients.events), at 0 from the start for the
# same reason: the Record failure ratio sums UNAVAILABLE, DATA_LOSS and INTERNAL.
RECORD_CODES = (
    "OK", "INVALID_ARGUMENT", "UNAVAILABLE", "DATA_LOSS", "INTERNAL", "CANCELLED",
)  # fmt: skip
RELOAD_RESULTS = ("applied", "rejected")


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`, in Prometheus text of
    any exporter (the gateway, `seminar serve`, Triton). The parser names a counter's samples
    NAME_total even where the exporter wrote NAME (as Triton's nv_* counters do), so both
    spellings count."""
    from prometheus_client.parser import text_string_to_metric_families

    names = {name, name.removesuffix("_total") + "_total"}
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in names and all(sample.labels.get(k) == v for k, v in labels.items())
    )


class GatewayMetrics:
    """Every series the gateway exports. `arm` is "" for requests rejected before assignment."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "seminar_gateway_requests",
            "Rank requests by arm, model version and gRPC status code.",
            ["arm", "model_version", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "seminar_gateway_request_latency_seconds",
            "Rank latency inside the gateway (validation + Triton + sorting).",
            ["arm", "model_version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.triton_latency = Histogram(
            "seminar_gateway_triton_latency_seconds",
            "Latency of the gateway's Triton infer calls, primary and shadow.",
            ["arm", "model_version", "role"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.shadow_requests = Counter(
            "seminar_gateway_shadow_requests",
            "Shadow-arm calls by outcome (never affects the response).",
            ["arm", "model_version", "code"],
            registry=r,
        )
        self.shadow_agreement = Histogram(
            "seminar_gateway_shadow_agreement",
            "Spearman rank correlation between primary and shadow rankings of one request.",
            ["arm", "model_version"],
            buckets=AGREEMENT_BUCKETS,
            registry=r,
        )
        self.config_reloads = Counter(
            "seminar_gateway_config_reloads",
            "Experiment config reloads by result (applied | rejected).",
            ["result"],
            registry=r,
        )
        for result in RELOAD_RESULTS:  # the first reload must show as an increase from 0
            self.config_reloads.labels(result)
        # Requests refused before assignment (arm ""), at 0 too: the first ones must show as a
        # rate, not as a series that appears already counted.
        self.requests.labels("", "", "INVALID_ARGUMENT")
        self.arm_ready = Gauge(
            "seminar_gateway_arm_ready",
            "1 when Triton reports the arm's (model, version) READY, else 0 (shadow included).",
            ["arm", "model_version"],
            registry=r,
        )
        self.triton_reachable = Gauge(
            "seminar_gateway_triton_reachable",
            "1 when Triton answered the last readiness probe, else 0.",
            registry=r,
        )
        self.triton_inflight = Gauge(
            "seminar_gateway_triton_inflight",
            "Triton calls outstanding, abandoned ones included (bounded by limits.max_inflight).",
            registry=r,
        )
        self.triton_abandoned = Counter(
            "seminar_gateway_triton_abandoned",
            "Triton calls the gateway stopped waiting for (budget over or caller gone); each "
            "is left to finish inside Triton, never cancelled.",
            ["arm", "model_version", "role"],
            registry=r,
        )
        self.triton_late = Counter(
            "seminar_gateway_triton_late",
            "How abandoned Triton calls ended (their results are dropped), by status code.",
            ["arm", "model_version", "role", "code"],
            registry=r,
        )
        self.arm_share = Gauge(
            "seminar_gateway_arm_share",
            "Share of users each arm is assigned under the current config (weight / sum of weights).",
            ["arm", "model_version"],
            registry=r,
        )
        # ---- Record (seminar.v1.Events) -----------------------------------------------------
        self.events_recorded = Counter(
            "seminar_gateway_events_recorded",
            "Events of Record calls by outcome: stored (new, durable), duplicate (stored before "
            "with the same content: a retry's), rejected (its batch was INVALID_ARGUMENT).",
            ["outcome"],
            registry=r,
        )
        self.record_requests = Counter(
            "seminar_gateway_record_requests",
            "Record calls by gRPC status code.",
            ["code"],
            registry=r,
        )
        self.record_latency = Histogram(
            "seminar_gateway_record_latency_seconds",
            "Acknowledgement time of Record calls answered OK (validation + durable append).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.impressions = Counter(
            "seminar_gateway_impressions",
            "Recorded impressions (IMPRESSION or clicked events) by the arm and model version "
            "that served the ranking their request_id names.",
            ["arm", "model_version"],
            registry=r,
        )
        self.clicks = Counter(
            "seminar_gateway_clicks",
            "Recorded clicks (clicked events) by the arm and model version that served the "
            "ranking their request_id names.",
            ["arm", "model_version"],
            registry=r,
        )
        self.event_log = Info(
            "seminar_gateway_event_log",
            "The online event log Record writes to (kind: sqlite or redis); absent without one.",
            registry=r,
        )

    def serve_record(self, kind: str) -> None:
        """Publish the log's kind and every outcome and code at 0, so that a rate over them
        exists before the first event (an alert on rejected events or failed calls needs the
        series)."""
        self.event_log.info({"kind": kind})
        for outcome in EVENT_OUTCOMES:
            self.events_recorded.labels(outcome)
        for code in RECORD_CODES:
            self.record_requests.labels(code)

    def publish_arms(self, arms: Iterable[Arm]) -> None:
        """Every code of every arm's requests, and its impressions and clicks, at 0, for the
        arms of a config being applied. Arms a reload removes keep their series: their counts
        are part of the experiment's record."""
        for arm in arms:
            for code in ARM_CODES:
                self.requests.labels(arm.name, arm.model_version, code)
            self.impressions.labels(arm.name, arm.model_version)
            self.clicks.labels(arm.name, arm.model_version)
