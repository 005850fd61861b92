"""`seminar ab report`: what an A/B experiment's attributed events say, arm by arm.

Reading. Every event in the log after `since_seq` whose request_id parses
(seminar.clients.attribution) is attributed to the arm that served its ranking. By the rule
the gateway's counters use (`attribution.outcome`), an IMPRESSION event or a clicked event is
one impression, a clicked event one click. Events are grouped by (arm, user): the user is the
unit of randomisation (the gateway buckets users, not requests), so the user, not the
impression, is the independent observation.

Per arm: users, impressions, clicks and CTR = sum(clicks) / sum(impressions).

Lift. The relative lift of a treatment t against control c is L = R_t / R_c - 1, where
R = C / M is the ratio of the arm's per-user means of clicks (C) and impressions (M). A user's
impressions are correlated (some users click more), so R's variance comes from the delta
method on the per-user sums (Deng, Knoblich and Lu, "Applying the Delta Method in Metric
Analytics", KDD 2018), not from a binomial over impressions:

    Var(R) ~= (s_cc - 2 R s_cm + R^2 s_mm) / (n M^2)

with n users, s_cc and s_mm the sample variances of per-user clicks and impressions and s_cm
their covariance. The arms are independent samples, so, by the delta method again,

    Var(R_t / R_c) ~= Var(R_t) / R_c^2 + R_t^2 Var(R_c) / R_c^4
    se(L) = sqrt(Var(R_t / R_c)),   CI = L -+ z_(1-alpha/2) se(L),   p = 2 (1 - Phi(|L| / se(L)))

The CI excludes 0 exactly when p < alpha, so the verdict is "better" (CI above 0), "worse"
(CI below 0) or "inconclusive"; an arm with under `min_users` users or a control with no
click makes it "inconclusive" with the reason. A per-impression z-test would treat a heavy
user's impressions as independent and be overconfident (tests/test_ab_report.py measures how
much on planted data).

Sample-ratio mismatch (SRM). If users reach the arms in other proportions than the config's
weights, assignment or logging is broken and the comparison is invalid whatever its p-value.
A chi-square goodness-of-fit test of the arms' user counts against the weights flags a
mismatch at p < 0.001, the industry convention (a threshold this low keeps false alarms rare
over the many reports an experiment gets); users in an arm of weight 0 are a mismatch too.
A user counted in two arms (after a weight change moved them) counts in each.

Outputs: report.json, report.md and report.png (CTR per arm with its 95% CI, lift with its
CI), and one verdict line a script can read, e.g.
`verdict: treatment better lift=+4.1% [+1.2%, +7.0%] p=0.006`.

Live view. `live_view` reads the gateway's impression and click counters from Prometheus and
gives CTR per arm, without a CI: the counters sum over users, and the per-user spread the CI
needs is only in the event log.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seminar.clients.attribution import outcome, parse_request_id
from seminar.clients.config import ExperimentConfig
from seminar.events import EventLog

CONTROL_NAME = "control"
VERDICTS = ("better", "worse", "inconclusive")


@dataclass(frozen=True)
class ReportConfig:
    """The statistics' settings, defaults in one place."""

    alpha: float = 0.05  # two-sided level of the lift test; the CI is (1 - alpha)
    srm_alpha: float = 0.001  # a sample-ratio mismatch is flagged at p < srm_alpha
    min_users: int = 2  # per arm, for a variance (below it the verdict is inconclusive)
    control: str = ""  # "" = the arm named "control", else the config's first arm
    page_events: int = 50_000  # events per read_range call

    def __post_init__(self) -> None:
        for name in ("alpha", "srm_alpha"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if self.min_users < 2:
            raise ValueError(f"min_users must be at least 2, got {self.min_users}")
        if self.page_events < 1:
            raise ValueError(f"page_events must be at least 1, got {self.page_events}")


@dataclass
class Outcomes:
    """Attributed impressions and clicks per arm and user, as read from a log."""

    # arm -> user id -> [impressions, clicks]
    per_user: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    model_versions: dict[str, set[str]] = field(default_factory=dict)
    events_read: int = 0
    unattributed: int = 0  # outcome events whose request_id is empty or does not parse
    since_seq: int = 0
    up_to_seq: int = 0

    def add(self, arm: str, model_version: str, user_id: int, shown: int, clicked: int) -> None:
        counts = self.per_user.setdefault(arm, {}).setdefault(user_id, [0, 0])
        counts[0] += shown
        counts[1] += clicked
        self.model_versions.setdefault(arm, set()).add(model_version)

    def arrays(self, arm: str) -> tuple[np.ndarray, np.ndarray]:
        """Per-user (impressions, clicks) of `arm`, in user order (empty when none)."""
        users = self.per_user.get(arm, {})
        counts = np.asarray([users[user] for user in sorted(users)], dtype=np.float64)
        if counts.size == 0:
            return np.zeros(0), np.zeros(0)
        return counts[:, 0], counts[:, 1]


def read_outcomes(log: EventLog, since_seq: int = 0, page_events: int = 50_000) -> Outcomes:
    """Every attributed outcome of the events with seq > since_seq, up to the log's high
    watermark taken before reading (a report is of a fixed set of events)."""
    found = Outcomes(since_seq=since_seq, up_to_seq=log.high_watermark())
    cursor = since_seq
    while cursor < found.up_to_seq:
        page = log.read_range(cursor, found.up_to_seq, limit=page_events)
        if not page:
            break
        for stored in page:
            found.events_read += 1
            counted = outcome(stored.event)
            if counted is None:
                continue
            served = parse_request_id(stored.event.request_id)
            if served is None:
                found.unattributed += 1
                continue
            found.add(served.arm, served.model_version, stored.event.user_id, *counted)
        cursor = page[-1].seq
    return found


@dataclass(frozen=True)
class ArmStats:
    """One arm: its users and outcomes, CTR and the CTR's delta-method standard error."""

    arm: str
    weight: float | None  # None: an arm the config lacks
    model_versions: tuple[str, ...]
    users: int
    impressions: int
    clicks: int
    ctr: float | None  # None without impressions
    ctr_se: float | None  # None under 2 users


def ratio_variance(impressions: np.ndarray, clicks: np.ndarray) -> float:
    """Var(sum clicks / sum impressions) by the delta method over users (module docstring);
    needs at least 2 users and some impressions."""
    users = impressions.size
    mean_impressions = impressions.mean()
    ratio = clicks.sum() / impressions.sum()
    covariance = np.cov(clicks, impressions, ddof=1)
    numerator = covariance[0, 0] - 2 * ratio * covariance[0, 1] + ratio**2 * covariance[1, 1]
    return float(max(numerator, 0.0) / (users * mean_impressions**2))


def arm_stats(arm: str, weight: float | None, outcomes: Outcomes) -> ArmStats:
    impressions, clicks = outcomes.arrays(arm)
    total = int(impressions.sum())
    ctr = float(clicks.sum() / total) if total else None
    se = math.sqrt(ratio_variance(impressions, clicks)) if total and impressions.size >= 2 else None
    return ArmStats(
        arm, weight, tuple(sorted(outcomes.model_versions.get(arm, ()))), int(impressions.size),
        total, int(clicks.sum()), ctr, se,
    )  # fmt: skip


@dataclass(frozen=True)
class Comparison:
    """A treatment against control: relative lift, its CI and p-value, the verdict."""

    treatment: str
    control: str
    verdict: str  # one of VERDICTS
    lift: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    reason: str = ""  # why inconclusive without a test

    def line(self) -> str:
        """The comparison in the verdict line's words."""
        if self.lift is None or self.ci_low is None or self.ci_high is None:
            return f"{self.treatment} inconclusive ({self.reason})"
        return (
            f"{self.treatment} {self.verdict} lift={self.lift:+.1%} "
            f"[{self.ci_low:+.1%}, {self.ci_high:+.1%}] p={self.p_value:.3g}"
        )


def compare(treatment: ArmStats, control: ArmStats, config: ReportConfig) -> Comparison:
    """Relative lift of `treatment` over `control` by the delta method (module docstring)."""
    from scipy.stats import norm

    names = treatment.arm, control.arm
    for arm in (treatment, control):
        if arm.users < config.min_users or arm.ctr is None or arm.ctr_se is None:
            return Comparison(*names, "inconclusive", reason=f"{arm.arm} has {arm.users} users "
                              f"with impressions, under {config.min_users}")  # fmt: skip
    assert treatment.ctr is not None and control.ctr is not None  # for the type checker
    assert treatment.ctr_se is not None and control.ctr_se is not None
    if control.ctr == 0:
        return Comparison(*names, "inconclusive", reason=f"{control.arm} has no click")
    lift = treatment.ctr / control.ctr - 1
    variance = (treatment.ctr_se / control.ctr) ** 2 + (
        treatment.ctr * control.ctr_se / control.ctr**2
    ) ** 2
    se = math.sqrt(variance)
    if se == 0:
        return Comparison(*names, "inconclusive", lift, reason="no variance between users")
    z = float(norm.ppf(1 - config.alpha / 2))
    p_value = float(2 * norm.sf(abs(lift) / se))
    low, high = lift - z * se, lift + z * se
    verdict = "better" if low > 0 else "worse" if high < 0 else "inconclusive"
    return Comparison(*names, verdict, lift, low, high, p_value)


@dataclass(frozen=True)
class SampleRatio:
    """The chi-square goodness-of-fit check of arm user counts against the weights."""

    users: dict[str, int]
    expected_share: dict[str, float]
    chi2: float
    p_value: float
    mismatch: bool
    reason: str = ""


def sample_ratio(
    users: Mapping[str, int], weights: Mapping[str, float], srm_alpha: float
) -> SampleRatio:
    """Users per arm against the weights (module docstring): a mismatch at p < srm_alpha, or
    any user in an arm of weight 0."""
    from scipy.stats import chi2

    total_weight = sum(weights.values())
    shares = {arm: weight / total_weight for arm, weight in weights.items()}
    counts = {arm: int(users.get(arm, 0)) for arm in weights}
    stray = {arm: count for arm, count in counts.items() if shares[arm] == 0 and count}
    live = [arm for arm in weights if shares[arm] > 0]
    total = sum(counts[arm] for arm in live)
    if total == 0 or len(live) < 2:
        statistic, p_value = 0.0, 1.0
    else:
        expected = np.asarray([total * shares[arm] for arm in live])
        observed = np.asarray([counts[arm] for arm in live], dtype=np.float64)
        statistic = float(((observed - expected) ** 2 / expected).sum())
        p_value = float(chi2.sf(statistic, df=len(live) - 1))
    reasons = []
    if p_value < srm_alpha:
        observed_shares = ", ".join(f"{arm} {counts[arm]:,}" for arm in live)
        expected_shares = "/".join(f"{shares[arm]:.0%}" for arm in live)
        reasons.append(f"users {observed_shares}, expected {expected_shares} (p={p_value:.2g})")
    reasons += [f"{arm} has weight 0 but {count:,} users" for arm, count in stray.items()]
    return SampleRatio(counts, shares, statistic, p_value, bool(reasons), "; ".join(reasons))


@dataclass(frozen=True)
class AbReport:
    """Everything `seminar ab report` says about one experiment."""

    source: str
    since_seq: int
    up_to_seq: int
    events_read: int
    unattributed_events: int
    control: str
    alpha: float
    arms: tuple[ArmStats, ...]
    comparisons: tuple[Comparison, ...]
    sample_ratio: SampleRatio
    unknown_arms: tuple[str, ...]  # arms in the log the config lacks (not compared)
    users_in_several_arms: int

    @property
    def valid(self) -> bool:
        """False on a sample-ratio mismatch: then no lift is a result."""
        return not self.sample_ratio.mismatch

    def verdict_line(self) -> str:
        if not self.valid:
            return f"verdict: invalid sample-ratio mismatch: {self.sample_ratio.reason}"
        if not self.comparisons:
            return f"verdict: inconclusive (one arm, {self.control}: nothing to compare)"
        return "verdict: " + "; ".join(comparison.line() for comparison in self.comparisons)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "valid": self.valid, "verdict": self.verdict_line()}

    def markdown(self) -> str:
        def percent(value: float | None, se: float | None = None) -> str:
            if value is None:
                return "-"
            return f"{value:.3%}" + ("" if se is None else f" ± {1.96 * se:.3%}")

        lines = [
            f"# A/B report: {self.source}",
            "",
            f"Events with seq {self.since_seq + 1:,} to {self.up_to_seq:,}: {self.events_read:,} "
            f"read, {self.unattributed_events:,} outcome events not attributed (no or a garbled "
            "request_id). Statistics at the user level (delta method), "
            f"alpha {self.alpha:g}.",
            "",
            "| arm | weight | model versions | users | impressions | clicks | CTR (95% CI) |",
            "|---|---:|---|---:|---:|---:|---:|",
        ]
        for arm in self.arms:
            weight = "not configured" if arm.weight is None else f"{arm.weight:g}"
            lines.append(
                f"| {arm.arm} | {weight} | {', '.join(arm.model_versions) or '-'} | "
                f"{arm.users:,} | {arm.impressions:,} | {arm.clicks:,} | "
                f"{percent(arm.ctr, arm.ctr_se)} |"
            )
        lines += ["", f"Lift against {self.control}:", ""]
        lines += [f"- {comparison.line()}" for comparison in self.comparisons] or ["- none"]
        srm = self.sample_ratio
        lines += [
            "",
            f"Sample ratio: chi2 {srm.chi2:.3g}, p {srm.p_value:.3g}: "
            + (f"MISMATCH, the experiment is invalid ({srm.reason})" if srm.mismatch else "ok"),
        ]
        if self.unknown_arms:
            lines.append(f"Arms in the log but not in the config (not compared): "
                         f"{', '.join(self.unknown_arms)}.")  # fmt: skip
        if self.users_in_several_arms:
            lines.append(f"{self.users_in_several_arms:,} users have events in several arms "
                         "(counted in each).")  # fmt: skip
        return "\n".join([*lines, "", self.verdict_line(), ""])


def control_arm(config: ExperimentConfig, chosen: str = "") -> str:
    """The arm lifts are measured against: `chosen`, else the arm named control, else the
    first arm; a UsageError when `chosen` is not an arm of the config."""
    from seminar.errors import UsageError

    names = [arm.name for arm in config.arms]
    if chosen:
        if chosen not in names:
            raise UsageError(f"--control {chosen!r} is not an arm of the config: {names}")
        return chosen
    return CONTROL_NAME if CONTROL_NAME in names else names[0]


def build_report(
    outcomes: Outcomes, config: ExperimentConfig, source: str, settings: ReportConfig | None = None
) -> AbReport:
    """The report of `outcomes` under the experiment `config` (module docstring)."""
    settings = settings or ReportConfig()
    control = control_arm(config, settings.control)
    weights = {arm.name: float(arm.weight) for arm in config.arms}
    unknown = tuple(sorted(set(outcomes.per_user) - set(weights)))
    arms = tuple(arm_stats(name, weights.get(name), outcomes) for name in [*weights, *unknown])
    by_name = {arm.arm: arm for arm in arms}
    comparisons = tuple(
        compare(by_name[name], by_name[control], settings) for name in weights if name != control
    )
    seen: dict[int, int] = {}
    for users in outcomes.per_user.values():
        for user in users:
            seen[user] = seen.get(user, 0) + 1
    return AbReport(
        source=source,
        since_seq=outcomes.since_seq,
        up_to_seq=outcomes.up_to_seq,
        events_read=outcomes.events_read,
        unattributed_events=outcomes.unattributed,
        control=control,
        alpha=settings.alpha,
        arms=arms,
        comparisons=comparisons,
        sample_ratio=sample_ratio(
            {arm.arm: arm.users for arm in arms}, weights, settings.srm_alpha
        ),
        unknown_arms=unknown,
        users_in_several_arms=sum(1 for count in seen.values() if count > 1),
    )


def plot_report(report: AbReport, path: Path) -> None:
    """CTR per arm with its 95% CI, and each treatment's lift with its CI, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (ctr_axes, lift_axes) = plt.subplots(1, 2, figsize=(11, 4))
    shown = [arm for arm in report.arms if arm.ctr is not None]
    ctr_axes.errorbar(
        [arm.arm for arm in shown],
        [100 * arm.ctr for arm in shown if arm.ctr is not None],
        yerr=[196 * (arm.ctr_se or 0.0) for arm in shown],
        fmt="o",
        capsize=6,
    )
    ctr_axes.set_ylabel("CTR, % (95% CI, user-level delta method)")
    ctr_axes.set_title(f"{report.source}: CTR per arm")
    tested = [c for c in report.comparisons if c.lift is not None and c.ci_low is not None]
    lift_axes.axhline(0, color="grey", linewidth=1)
    for index, comparison in enumerate(tested):
        assert comparison.lift is not None and comparison.ci_low is not None
        assert comparison.ci_high is not None
        lift_axes.errorbar(
            [index], [100 * comparison.lift],
            yerr=[[100 * (comparison.lift - comparison.ci_low)],
                  [100 * (comparison.ci_high - comparison.lift)]],
            fmt="o", capsize=6,
        )  # fmt: skip
    lift_axes.set_xticks(range(len(tested)), [c.treatment for c in tested])
    lift_axes.set_xlim(-0.5, max(len(tested), 1) - 0.5)
    lift_axes.set_ylabel(f"relative lift vs {report.control}, % ({1 - report.alpha:.0%} CI)")
    lift_axes.set_title(report.verdict_line().removeprefix("verdict: ")[:80], fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(report: AbReport, out: Path) -> list[Path]:
    """report.json, report.md and report.png under `out` (created); the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.md", out / "report.png"]
    paths[0].write_text(json.dumps(report.to_json(), indent=2) + "\n")
    paths[1].write_text(report.markdown())
    plot_report(report, paths[2])
    return paths


@dataclass(frozen=True)
class LiveArm:
    """One arm as the gateway's counters see it: totals over every user, no CI."""

    arm: str
    model_version: str
    impressions: float
    clicks: float

    @property
    def ctr(self) -> float | None:
        return self.clicks / self.impressions if self.impressions else None


def live_view(prometheus_url: str) -> list[LiveArm]:
    """Impressions, clicks and CTR per (arm, model version) from the gateway's counters as
    Prometheus holds them now, summed over gateway replicas."""
    from seminar.clients.observe import prometheus_query

    def totals(name: str) -> dict[tuple[str, str], float]:
        rows = prometheus_query(prometheus_url, f"sum by (arm, model_version) ({name})")
        return {
            (row["metric"].get("arm", ""), row["metric"].get("model_version", "")): float(
                row["value"][1]
            )
            for row in rows
        }

    impressions = totals("seminar_gateway_impressions_total")
    clicks = totals("seminar_gateway_clicks_total")
    return [
        LiveArm(arm, version, impressions[(arm, version)], clicks.get((arm, version), 0.0))
        for arm, version in sorted(impressions)
    ]


def live_markdown(arms: Iterable[LiveArm], prometheus_url: str) -> str:
    lines = [
        f"Live view from {prometheus_url} (the gateway's counters): no confidence interval, "
        "since counters sum impressions over users and the user is the unit of "
        "randomisation; the event log report (--event-log) has the CIs.",
        "",
        "| arm | model version | impressions | clicks | CTR |",
        "|---|---|---:|---:|---:|",
    ]
    for arm in arms:
        ctr = "-" if arm.ctr is None else f"{arm.ctr:.3%}"
        lines.append(
            f"| {arm.arm} | {arm.model_version} | {arm.impressions:,.0f} | {arm.clicks:,.0f} "
            f"| {ctr} |"
        )
    return "\n".join(lines)
