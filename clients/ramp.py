"""`seminar ab ramp`: move a treatment's traffic through steps, judged by Prometheus guardrails.

For each step (for example 1, 5, 25, 50 %) the ramp

1. rewrites the A/B config atomically: the treatment's weight is the step's percent, the other
   arms share the rest in their current proportions;
2. makes the gateway reload it (SIGHUP to `--gateway-pid`; the gateway's file watcher would
   notice the change too) and waits until the gateway's /metrics shows the new share
   (`seminar_gateway_arm_share`), so the hold measures the step it claims to;
3. holds, checking the guardrails every `check_every_s` over the time spent in the step:
   - the treatment's error ratio (non-OK / all of its Rank requests),
   - its p99 latency against an absolute bound and against the control arms' p99,
   - its click-through rate against the control arms' once both have enough impressions
     (`seminar_gateway_impressions_total` / `seminar_gateway_clicks_total` by arm, over the
     whole ramp); absent series mean the CTR guardrail is not armed yet, which is logged;
   error and latency are judged once the treatment has `min_requests` requests in the window.

On a breach it writes weight 0 for the treatment, reloads, and raises CheckFailed naming the
guardrail, the measured value and the bound. Every step, check and rollback is one JSON line
of `log_path`; `metrics_file` (Prometheus text format, for node_exporter's textfile
collector) holds `seminar_ab_ramp_step_percent{treatment}`, the rollback counter and the last
measured value of each guardrail.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from seminar.clients.config import Arm, ExperimentConfig, load_config, write_config
from seminar.errors import CheckFailed, ServiceError, UsageError
from seminar.processes import http_request

# The guardrails, in the order they are judged (a broken treatment trips the first).
ERROR_RATIO, P99, P99_RATIO, CTR_DROP = "error_ratio", "p99_ms", "p99_ratio", "ctr_drop"
RELOAD_POLL_S = 0.1
# The window of a check reaches this far before the step began: a Prometheus scrape is up to
# one interval old, and rate() needs two samples.
WINDOW_MARGIN_S = 2.0


@dataclass(frozen=True)
class Guardrails:
    """The bounds a treatment must stay within at every step; a breach rolls it back."""

    max_error_ratio: float = 0.02  # non-OK / all of the treatment's requests
    max_p99_ms: float = 250.0  # the GatewayP99High alert's bound
    max_p99_ratio: float = 2.0  # treatment p99 / control p99
    max_ctr_drop: float = 0.10  # 1 - CTR(treatment) / CTR(control)
    min_requests: int = 50  # treatment requests in the window before error and latency count
    min_impressions: int = 1000  # impressions per side before the CTR guardrail counts

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if self.max_error_ratio > 1 or self.max_ctr_drop > 1:
            raise ValueError("max_error_ratio and max_ctr_drop are fractions in [0, 1]")


@dataclass(frozen=True)
class RampPlan:
    """What to ramp, how, and where to read and write; validated on construction."""

    config_path: Path
    treatment: str
    prometheus: str  # base URL, e.g. http://127.0.0.1:9090
    steps: tuple[float, ...] = (1.0, 5.0, 25.0, 50.0)
    hold_s: float = 60.0
    check_every_s: float = 5.0
    gateway_pid: int | None = None  # None: rely on the gateway's file watcher
    gateway_metrics: str = "http://127.0.0.1:9102/metrics"
    log_path: Path | None = None
    metrics_file: Path | None = None
    reload_timeout_s: float = 15.0
    guardrails: Guardrails = field(default_factory=Guardrails)

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("steps must list at least one percent")
        if any(not 0 < s <= 100 for s in self.steps) or list(self.steps) != sorted(set(self.steps)):
            raise ValueError(f"steps must increase strictly within (0, 100], got {self.steps}")
        if self.hold_s <= 0 or self.check_every_s <= 0 or self.reload_timeout_s <= 0:
            raise ValueError("hold, check interval and reload timeout must be > 0 seconds")


@dataclass(frozen=True)
class Verdict:
    """One guardrail at one check: its measured value, its bound, and whether it counted."""

    guardrail: str
    value: float | None  # None: not armed (too little traffic, or no series yet)
    bound: float
    note: str = ""

    @property
    def breached(self) -> bool:
        return self.value is not None and self.value > self.bound

    def sentence(self) -> str:
        return f"{self.guardrail} {self.value:.4g} > bound {self.bound:g}{self.note}"


def step_config(config: ExperimentConfig, treatment: str, percent: float) -> ExperimentConfig:
    """`config` with the treatment at `percent` and the other arms sharing 100 - percent in
    their current proportions (all equal when they are all 0)."""
    others = [arm for arm in config.arms if arm.name != treatment]
    if len(others) == len(config.arms):
        raise UsageError(f"--treatment {treatment!r} is not an arm of the config")
    if not others:
        raise UsageError(f"--treatment {treatment!r} is the only arm: nothing to ramp against")
    total = sum(arm.weight for arm in others)
    if total <= 0 and percent < 100:
        raise UsageError("no arm besides the treatment has a weight > 0: nothing to compare to")

    def weight(arm: Arm) -> float:
        if arm.name == treatment:
            return percent
        return round((100 - percent) * arm.weight / total, 9)

    arms = tuple(Arm(a.name, a.model, a.version, weight(a)) for a in config.arms)
    return ExperimentConfig(config.salt, arms, config.shadow, config.limits)


def rolled_back(config: ExperimentConfig, treatment: str) -> ExperimentConfig:
    """`config` with the treatment's weight 0 and every other arm as it was."""
    arms = tuple(
        Arm(a.name, a.model, a.version, 0 if a.name == treatment else a.weight) for a in config.arms
    )
    return ExperimentConfig(config.salt, arms, config.shadow, config.limits)


class Prometheus:
    """Instant queries over Prometheus's HTTP API; any failure is a ServiceError."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def vector(self, promql: str) -> dict[str, float]:
        """{arm label: value} of an instant vector query (NaN samples dropped)."""
        query = urllib.parse.urlencode({"query": promql})
        status, body = http_request(f"{self.url}/api/v1/query?{query}", timeout_s=10)
        if status != 200:
            raise ServiceError(f"Prometheus {self.url}: query {promql!r} failed: {status} {body}")
        result = json.loads(body)["data"]["result"]
        values = {r["metric"].get("arm", ""): float(r["value"][1]) for r in result}
        return {arm: value for arm, value in values.items() if not math.isnan(value)}

    def scalar(self, promql: str) -> float | None:
        """The value of a query that sums to one sample; None when it has none."""
        return next(iter(self.vector(promql).values()), None)


def _arms_matcher(arms: list[str]) -> str:
    """A PromQL regex matching exactly these arm names ("." in a name is literal)."""
    return "|".join(re.escape(arm).replace("\\", "\\\\") for arm in arms)


def judge(
    prometheus: Prometheus,
    treatment: str,
    control: list[str],
    window_s: float,
    ramp_s: float,
    bounds: Guardrails,
) -> list[Verdict]:
    """Every guardrail over the last `window_s` seconds (CTR: over the whole ramp, `ramp_s`)."""
    window, ramp_window = f"{math.ceil(window_s)}s", f"{math.ceil(ramp_s)}s"
    requests = "seminar_gateway_requests_total"
    total = prometheus.scalar(f'sum(increase({requests}{{arm="{treatment}"}}[{window}]))') or 0
    verdicts = []
    if total < bounds.min_requests:
        note = f"{total:.0f} treatment requests in {window} < min_requests {bounds.min_requests}"
        verdicts += [
            Verdict(name, None, bound, note)
            for name, bound in (
                (ERROR_RATIO, bounds.max_error_ratio),
                (P99, bounds.max_p99_ms),
                (P99_RATIO, bounds.max_p99_ratio),
            )
        ]
    else:
        errors = prometheus.scalar(
            f'sum(increase({requests}{{arm="{treatment}",code!="OK"}}[{window}]))'
        )
        # increase() extrapolates each series on its own, so the errors can exceed the total
        # by a fraction when every request failed.
        ratio = min((errors or 0) / total, 1.0)
        verdicts.append(Verdict(ERROR_RATIO, ratio, bounds.max_error_ratio))
        p99 = _p99_ms(prometheus, [treatment], window)
        control_p99 = _p99_ms(prometheus, control, window)
        verdicts.append(Verdict(P99, p99, bounds.max_p99_ms, " ms"))
        ratio = None if p99 is None or not control_p99 else p99 / control_p99
        note = "" if ratio is None else f" (treatment {p99:.1f} ms, control {control_p99:.1f} ms)"
        verdicts.append(Verdict(P99_RATIO, ratio, bounds.max_p99_ratio, note))
    verdicts.append(_ctr_verdict(prometheus, treatment, control, ramp_window, bounds))
    return verdicts


def _p99_ms(prometheus: Prometheus, arms: list[str], window: str) -> float | None:
    if not arms:  # at 100 % no other arm serves: nothing to compare to
        return None
    buckets = "seminar_gateway_request_latency_seconds_bucket"
    seconds = prometheus.scalar(
        f"histogram_quantile(0.99, sum by (le) "
        f'(rate({buckets}{{arm=~"{_arms_matcher(arms)}"}}[{window}])))'
    )
    return None if seconds is None else 1000 * seconds


def _ctr_verdict(
    prometheus: Prometheus, treatment: str, control: list[str], window: str, bounds: Guardrails
) -> Verdict:
    arms = _arms_matcher([treatment, *control])

    def by_side(metric: str) -> tuple[float, float] | None:
        values = prometheus.vector(f'sum by (arm) (increase({metric}{{arm=~"{arms}"}}[{window}]))')
        if treatment not in values or not any(arm in values for arm in control):
            return None
        return values[treatment], sum(values.get(arm, 0.0) for arm in control)

    impressions = by_side("seminar_gateway_impressions_total")
    clicks = by_side("seminar_gateway_clicks_total")
    if impressions is None or clicks is None:
        return Verdict(CTR_DROP, None, bounds.max_ctr_drop, "no impression/click series yet")
    if min(impressions) < bounds.min_impressions:
        return Verdict(
            CTR_DROP,
            None,
            bounds.max_ctr_drop,
            f"impressions treatment {impressions[0]:.0f}, control {impressions[1]:.0f} "
            f"< min_impressions {bounds.min_impressions}",
        )
    ctr_treatment, ctr_control = clicks[0] / impressions[0], clicks[1] / impressions[1]
    if ctr_control <= 0:
        return Verdict(CTR_DROP, None, bounds.max_ctr_drop, "control has no clicks yet")
    note = f" (CTR treatment {ctr_treatment:.4f}, control {ctr_control:.4f})"
    return Verdict(CTR_DROP, 1 - ctr_treatment / ctr_control, bounds.max_ctr_drop, note)


def _shown(verdict: Verdict) -> str:
    if verdict.value is None:
        return f"{verdict.guardrail} not armed ({verdict.note})"
    return f"{verdict.guardrail} {verdict.value:.4g} (bound {verdict.bound:g})"


class RampMeter:
    """The ramp's own metrics, rewritten atomically as a Prometheus textfile at every change."""

    def __init__(self, path: Path | None, treatment: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.path, self.treatment = path, treatment
        self.registry = CollectorRegistry()
        self.step = Gauge(
            "seminar_ab_ramp_step_percent",
            "The treatment's traffic percent the ramp last made the gateway serve.",
            ["treatment"],
            registry=self.registry,
        )
        self.rollbacks = Counter(
            "seminar_ab_ramp_rollbacks",
            "Ramps that rolled the treatment back to 0 %, by the guardrail that tripped.",
            ["treatment", "guardrail"],
            registry=self.registry,
        )
        self.guardrail = Gauge(
            "seminar_ab_ramp_guardrail_value",
            "The last measured value of each armed guardrail (its bound is in the ramp's log).",
            ["treatment", "guardrail"],
            registry=self.registry,
        )
        for name in (ERROR_RATIO, P99, P99_RATIO, CTR_DROP):
            self.rollbacks.labels(treatment, name)

    def write(self) -> None:
        if self.path is not None:
            from prometheus_client import write_to_textfile

            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_to_textfile(str(self.path), self.registry)


class Ramp:
    """One run of a RampPlan: `run()` returns the last percent reached or raises."""

    def __init__(self, plan: RampPlan, echo: Callable[[str], None] = print) -> None:
        self.plan = plan
        self.echo = echo
        self.prometheus = Prometheus(plan.prometheus)
        self.meter = RampMeter(plan.metrics_file, plan.treatment)
        self.percent: float | None = None  # the step last written to the config

    def run(self) -> float:
        plan = self.plan
        base = load_config(plan.config_path)
        step_config(base, plan.treatment, plan.steps[0])  # validates the treatment first
        self._check_reachable()
        control = [arm.name for arm in base.arms if arm.name != plan.treatment]
        ramp_start = time.monotonic()
        for percent in plan.steps:
            config = step_config(base, plan.treatment, percent)
            self._apply(config, percent)
            self.log("step", percent=percent, weights={a.name: a.weight for a in config.arms})
            self.echo(f"step {percent:g}%: applied; holding {plan.hold_s:g} s")
            weighted = [arm.name for arm in config.arms if arm.weight > 0]
            breach = self._hold([a for a in control if a in weighted], ramp_start)
            if breach is not None:
                self._roll_back(config, breach, percent)
        self.log("done", percent=plan.steps[-1])
        self.echo(f"ramp done: {plan.treatment} at {plan.steps[-1]:g}%")
        return plan.steps[-1]

    def interrupted(self) -> str:
        """Log an interruption; the sentence saying where the config was left."""
        self.log("interrupted", percent=self.percent)
        if self.percent is None:
            return f"interrupted before the first step: {self.plan.config_path} is unchanged"
        return (
            f"interrupted: {self.plan.config_path} is left at the last step written, "
            f"{self.plan.treatment} at {self.percent:g}%"
        )

    def log(self, event: str, **fields: Any) -> None:
        if self.plan.log_path is None:
            return
        record = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "event": event,
            "treatment": self.plan.treatment,
            **fields,
        }
        self.plan.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.plan.log_path.open("a") as out:
            out.write(json.dumps(record) + "\n")

    def _check_reachable(self) -> None:
        self.prometheus.vector("vector(1)")
        if self.plan.gateway_pid is not None:
            try:
                os.kill(self.plan.gateway_pid, 0)
            except OSError as err:
                raise ServiceError(
                    f"--gateway-pid {self.plan.gateway_pid}: no such process ({err.strerror})"
                ) from None
        self._gateway_metrics()

    def _gateway_metrics(self) -> str:
        status, body = http_request(self.plan.gateway_metrics, timeout_s=5)
        if status != 200:
            raise ServiceError(f"gateway metrics {self.plan.gateway_metrics}: {status} {body}")
        return body

    def _apply(self, config: ExperimentConfig, percent: float) -> None:
        """Write the config, signal the gateway, wait until it serves the new shares."""
        from seminar.clients.metrics import metric_total  # prometheus_client: not for --help

        metrics = self._gateway_metrics()
        rejected = metric_total(metrics, "seminar_gateway_config_reloads", result="rejected")
        write_config(config, self.plan.config_path)
        self.percent = percent
        if self.plan.gateway_pid is not None:
            try:
                os.kill(self.plan.gateway_pid, signal.SIGHUP)
            except OSError as err:
                raise ServiceError(
                    f"cannot signal the gateway (pid {self.plan.gateway_pid}): {err.strerror}"
                ) from None
        wanted = config.shares()[self.plan.treatment]
        deadline = time.monotonic() + self.plan.reload_timeout_s
        while True:
            metrics = self._gateway_metrics()
            share = metric_total(metrics, "seminar_gateway_arm_share", arm=self.plan.treatment)
            if abs(share - wanted) < 1e-6:
                self.meter.step.labels(self.plan.treatment).set(percent)
                self.meter.write()
                return
            if (
                metric_total(metrics, "seminar_gateway_config_reloads", result="rejected")
                > rejected
            ):
                raise ServiceError(
                    f"the gateway rejected the config at {percent:g}% (its log says why); "
                    f"{self.plan.config_path} holds that step but the gateway kept its old one"
                )
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"the gateway did not apply the {percent:g}% step within "
                    f"{self.plan.reload_timeout_s:g} s (arm share {share:g}, wanted {wanted:g})"
                )
            time.sleep(RELOAD_POLL_S)

    def _hold(self, control: list[str], ramp_start: float) -> Verdict | None:
        """Check the guardrails until the hold ends; the first breach, or None."""
        plan = self.plan
        step_start = time.monotonic()
        step_end = step_start + plan.hold_s
        while True:
            time.sleep(max(0.0, min(plan.check_every_s, step_end - time.monotonic())))
            now = time.monotonic()
            verdicts = judge(
                self.prometheus,
                plan.treatment,
                control,
                now - step_start + WINDOW_MARGIN_S,
                now - ramp_start + WINDOW_MARGIN_S,
                plan.guardrails,
            )
            self.log(
                "check",
                percent=self.percent,
                guardrails={
                    v.guardrail: {"value": v.value, "bound": v.bound, "note": v.note}
                    for v in verdicts
                },
            )
            for verdict in verdicts:
                if verdict.value is not None:
                    self.meter.guardrail.labels(plan.treatment, verdict.guardrail).set(
                        verdict.value
                    )
            self.meter.write()
            breach = next((v for v in verdicts if v.breached), None)
            if breach is not None or now >= step_end:
                if breach is None:
                    self.echo(f"step {self.percent:g}% held: " + "; ".join(map(_shown, verdicts)))
                return breach

    def _roll_back(self, config: ExperimentConfig, breach: Verdict, percent: float) -> None:
        self.meter.rollbacks.labels(self.plan.treatment, breach.guardrail).inc()
        sentence = (
            f"guardrail {breach.guardrail} tripped at {percent:g}%: {breach.sentence()}; "
            f"{self.plan.treatment} rolled back to 0%"
        )
        self.log("rollback", percent=percent, guardrail=breach.guardrail, value=breach.value,
                 bound=breach.bound)  # fmt: skip
        self._apply(rolled_back(config, self.plan.treatment), 0.0)
        raise CheckFailed(sentence)
