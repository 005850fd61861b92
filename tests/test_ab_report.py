"""`seminar ab report` (seminar.clients.ab_report) on planted truth.

Every experiment here is SYNTHETIC: users drawn with a planted per-user click probability
(Beta around the arm's true CTR, so users differ) and a planted number of impressions, written
as attributed events (request ids made by the gateway's own `new_request_id`) into a real
SQLite event log, then reported by the real command. The true relative lift is known, so the
CI can be checked against it; A/A experiments (no lift) measure the false-positive rate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from seminar.cli import app
from seminar.clients.ab_report import (
    Outcomes,
    ReportConfig,
    build_report,
    live_view,
    read_outcomes,
)
from seminar.clients.attribution import new_request_id
from seminar.clients.client import record_via_gateway
from seminar.clients.config import Arm, ExperimentConfig, write_config
from seminar.clients.observe import PrometheusProcess
from seminar.clients.process import GatewayProcess
from seminar.events import Event, EventType, open_event_log
from seminar.processes import free_port
from tests.support.clients import wait_until

ALPHA = 0.05
MAX_FALSE_POSITIVE_RATE = 0.15
BASE_CTR = 0.10


def two_arms(weights: tuple[float, float] = (50, 50)) -> ExperimentConfig:
    return ExperimentConfig(
        salt="synthetic",
        arms=(
            Arm("control", "seminar_v1", 1, weights[0]),
            Arm("treatment", "seminar_v2", 2, weights[1]),
        ),
    )


def draw_users(
    rng: np.random.Generator, users: int, ctr: float, concentration: float, mean_shown: float
) -> tuple[np.ndarray, np.ndarray]:
    """SYNTHETIC per-user (impressions, clicks): a user's click probability is
    Beta(ctr * k, (1 - ctr) * k) with k = `concentration` (smaller k: users differ more), drawn
    independently of the impressions (1 + Poisson), so the arm's true CTR is exactly `ctr`."""
    probability = rng.beta(ctr * concentration, (1 - ctr) * concentration, users)
    shown = 1 + rng.poisson(mean_shown - 1, users)
    return shown, rng.binomial(shown, probability)


def write_arm(
    log, arm: Arm, first_user: int, shown: np.ndarray, clicks: np.ndarray, tag: str = ""
) -> None:
    """Each user's ranking as the gateway names it; a click is a clicked REC event at its
    position, every other shown item an IMPRESSION event."""
    events: list[Event] = []
    for offset, (count, clicked) in enumerate(zip(shown, clicks, strict=True)):
        user = first_user + offset
        request_id = new_request_id(arm.name, arm.model, arm.version)
        for position in range(1, int(count) + 1):
            click = bool(position <= clicked)
            events.append(
                Event(
                    f"{tag}{arm.name}-{user}-{position}", user, 1000 + position, "",
                    EventType.REC if click else EventType.IMPRESSION, click,
                    request_id=request_id, position=position,
                )
            )  # fmt: skip
    for start in range(0, len(events), 1000):
        log.append(events[start : start + 1000])


def write_experiment(
    url: str,
    rng: np.random.Generator,
    config: ExperimentConfig,
    users: dict[str, int],
    ctr: dict[str, float],
    concentration: float = 20.0,
    mean_shown: float = 10.0,
) -> None:
    """A SYNTHETIC experiment: users[arm] users of true CTR ctr[arm] each, into the log."""
    with open_event_log(url) as log:
        first_user = 1
        for arm in config.arms:
            shown, clicks = draw_users(rng, users[arm.name], ctr[arm.name], concentration,
                                       mean_shown)  # fmt: skip
            write_arm(log, arm, first_user, shown, clicks)
            first_user += users[arm.name]


def report_cli(tmp_path: Path, url: str, config: ExperimentConfig, *extra: str):
    tmp_path.mkdir(parents=True, exist_ok=True)
    config_path = tmp_path / "ab.yaml"
    write_config(config, config_path)
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        ["ab", "report", "--event-log", url, "--config", str(config_path), "--out", str(out),
         *extra],
    )  # fmt: skip
    return result, out


def last_line(output: str) -> str:
    return output.strip().splitlines()[-1]


@pytest.mark.parametrize(("true_lift", "verdict"), [(0.20, "better"), (-0.20, "worse")])
def test_a_planted_lift_is_found_and_its_ci_contains_the_truth(
    tmp_path: Path, true_lift: float, verdict: str
) -> None:
    # 2,000 users per arm, ~10 impressions each, CTR 10%: se(lift) is about 3.5 points, so a
    # true lift of 20% is over 5 standard errors from 0 (power above 99.9%).
    url = f"sqlite://{tmp_path / 'events.db'}"
    config = two_arms()
    truth = {"control": BASE_CTR, "treatment": BASE_CTR * (1 + true_lift)}
    write_experiment(url, np.random.default_rng(7), config, {"control": 2000, "treatment": 2000},
                     truth)  # fmt: skip
    result, out = report_cli(tmp_path, url, config)
    print(result.output)
    assert result.exit_code == 0, result.output
    assert last_line(result.output).startswith(f"verdict: treatment {verdict} lift=")
    report = json.loads((out / "report.json").read_text())
    (comparison,) = report["comparisons"]
    assert comparison["ci_low"] <= true_lift <= comparison["ci_high"]
    assert comparison["ci_low"] > 0 or comparison["ci_high"] < 0  # excludes 0
    assert comparison["p_value"] < ALPHA and comparison["verdict"] == verdict
    assert [arm["users"] for arm in report["arms"]] == [2000, 2000]
    assert not report["sample_ratio"]["mismatch"] and report["valid"]
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| control |" in (out / "report.md").read_text()


def test_a_a_experiments_have_a_false_positive_rate_near_alpha(tmp_path: Path) -> None:
    """20 SYNTHETIC A/A experiments (the same true CTR in both arms), each its own real SQLite
    log, reported by the real command. 1,000 users per arm (about 400 clicks): the delta
    method is asymptotic, and with a few hundred users its rate runs a little above alpha."""
    positives = 0
    experiments = 20
    for seed in range(experiments):
        url = f"sqlite://{tmp_path / f'aa-{seed}.db'}"
        config = two_arms()
        write_experiment(url, np.random.default_rng(100 + seed), config,
                         {"control": 1000, "treatment": 1000},
                         {"control": BASE_CTR, "treatment": BASE_CTR}, mean_shown=4)  # fmt: skip
        result, _ = report_cli(tmp_path / f"aa-{seed}", url, config)
        assert result.exit_code == 0, result.output
        positives += " inconclusive" not in last_line(result.output)
    rate = positives / experiments
    print(f"\nA/A false-positive rate over {experiments} logged experiments: {rate:.2f}")
    assert rate <= MAX_FALSE_POSITIVE_RATE


def naive_impression_test_rejects(outcomes: Outcomes) -> bool:
    """The per-impression two-proportion z-test a user-level test replaces: it treats every
    impression as independent."""
    from scipy.stats import norm

    (shown_c, clicks_c), (shown_t, clicks_t) = (
        outcomes.arrays(a) for a in ("control", "treatment")
    )
    impressions_c, impressions_t = shown_c.sum(), shown_t.sum()
    pooled = (clicks_c.sum() + clicks_t.sum()) / (impressions_c + impressions_t)
    se = np.sqrt(pooled * (1 - pooled) * (1 / impressions_c + 1 / impressions_t))
    z = (clicks_t.sum() / impressions_t - clicks_c.sum() / impressions_c) / se
    return bool(2 * norm.sf(abs(z)) < ALPHA)


def test_user_level_statistics_hold_alpha_where_a_per_impression_test_does_not() -> None:
    """SYNTHETIC A/A experiments with very different users (Beta concentration 2: some users
    click most things, most almost nothing) and many impressions each: the impressions of a
    user are correlated, so a per-impression z-test is overconfident; the delta method over
    users is not. Offline, over outcomes as the log reader groups them."""
    config = two_arms()
    experiments, delta_positives, naive_positives = 200, 0, 0
    for seed in range(experiments):
        rng = np.random.default_rng(seed)
        outcomes = Outcomes()
        for arm_index, arm in enumerate(config.arms):
            shown, clicks = draw_users(rng, 300, BASE_CTR, concentration=2.0, mean_shown=20)
            for user, (count, clicked) in enumerate(zip(shown, clicks, strict=True)):
                outcomes.add(arm.name, arm.model_version, arm_index * 1000 + user, count, clicked)
        report = build_report(outcomes, config, "synthetic", ReportConfig(alpha=ALPHA))
        delta_positives += report.comparisons[0].verdict != "inconclusive"
        naive_positives += naive_impression_test_rejects(outcomes)
    delta_rate, naive_rate = delta_positives / experiments, naive_positives / experiments
    print(f"\nA/A false-positive rate, heterogeneous users, {experiments} experiments: "
          f"delta method {delta_rate:.3f}, per-impression z-test {naive_rate:.3f}")  # fmt: skip
    assert delta_rate <= MAX_FALSE_POSITIVE_RATE
    assert naive_rate > 2 * delta_rate and naive_rate > MAX_FALSE_POSITIVE_RATE


def test_a_forced_60_40_split_on_a_50_50_config_is_a_sample_ratio_mismatch(
    tmp_path: Path,
) -> None:
    config = two_arms((50, 50))
    same_ctr = {"control": BASE_CTR, "treatment": BASE_CTR}
    forced = f"sqlite://{tmp_path / 'forced.db'}"
    write_experiment(forced, np.random.default_rng(1), config,
                     {"control": 1200, "treatment": 800}, same_ctr, mean_shown=3)  # fmt: skip
    result, out = report_cli(tmp_path / "forced", forced, config)
    print(result.output)
    assert result.exit_code == 1  # CheckFailed: the experiment is invalid
    assert last_line(result.stdout).startswith("verdict: invalid sample-ratio mismatch")
    assert "control 1,200, treatment 800" in last_line(result.stdout)
    assert json.loads((out / "report.json").read_text())["valid"] is False
    # The same 60/40 split is what a 60/40 config asks for: no mismatch.
    result, _ = report_cli(tmp_path / "asked", forced, two_arms((60, 40)))
    assert result.exit_code == 0, result.output
    balanced = f"sqlite://{tmp_path / 'balanced.db'}"
    write_experiment(balanced, np.random.default_rng(2), config,
                     {"control": 1000, "treatment": 1000}, same_ctr, mean_shown=3)  # fmt: skip
    result, _ = report_cli(tmp_path / "balanced", balanced, config)
    assert result.exit_code == 0, result.output
    assert "mismatch" not in last_line(result.output)


def test_hostile_logs_give_a_valid_report_of_what_is_attributable(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'events.db'}"
    config = two_arms()
    open_event_log(url).close()  # an empty log
    result, _ = report_cli(tmp_path / "empty", url, config)
    assert result.exit_code == 0, result.output
    assert last_line(result.output) == (
        "verdict: treatment inconclusive (treatment has 0 users with impressions, under 2)"
    )
    control, treatment = config.arms
    good = new_request_id(control.name, control.model, control.version)
    with open_event_log(url) as log:
        rng = np.random.default_rng(3)
        for arm, first in ((control, 1), (treatment, 501)):
            write_arm(log, arm, first, *draw_users(rng, 300, BASE_CTR, 20.0, 4))
        # Unknown to the config: reported, never compared nor counted in the sample ratio.
        write_arm(log, Arm("rogue", "seminar_v9", 9), 9001, np.full(50, 3), np.ones(50, int))
        log.append([
            Event("no-id", 1, 5, "", EventType.REC, True),
            Event("garbled", 1, 5, "", EventType.REC, True, request_id=good[:-3] + "xyz"),
            Event("forged", 2, 5, "", EventType.IMPRESSION, False, request_id="control~a~1"),
            Event("plain", 2, 6, "", EventType.REC, False, request_id=good),  # no outcome
        ])  # fmt: skip
    result, out = report_cli(tmp_path / "hostile", url, config)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["unattributed_events"] == 3
    assert report["unknown_arms"] == ["rogue"]
    assert [(arm["arm"], arm["users"]) for arm in report["arms"]] == [
        ("control", 300), ("treatment", 300), ("rogue", 50),
    ]  # fmt: skip
    assert report["sample_ratio"]["users"] == {"control": 300, "treatment": 300}
    assert "rogue" not in last_line(result.output)
    # --since-seq: only what came after (the 4 hand-written events: nothing attributable)
    with open_event_log(url) as log:
        since = log.high_watermark() - 4
    with open_event_log(url) as log:
        assert read_outcomes(log, since).unattributed == 3
    single = ExperimentConfig(salt="s", arms=(Arm("control", "seminar_v1", 1, 100),))
    result, _ = report_cli(tmp_path / "single", url, single)
    assert result.exit_code == 0, result.output
    assert (
        last_line(result.output) == "verdict: inconclusive (one arm, control: nothing to compare)"
    )


def test_the_report_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    config = two_arms()
    result, _ = report_cli(tmp_path, f"sqlite://{tmp_path / 'missing.db'}", config)
    assert result.exit_code == 3 and "no event log there" in result.output
    config_path = tmp_path / "ab.yaml"
    result = CliRunner().invoke(app, ["ab", "report", "--config", str(config_path)])
    assert result.exit_code == 2 and "--event-log" in result.output
    result, _ = report_cli(tmp_path, f"sqlite://{tmp_path / 'x.db'}", config, "--control", "nope")
    assert result.exit_code == 2 and "nope" in result.output
    result, _ = report_cli(tmp_path, f"sqlite://{tmp_path / 'x.db'}", config, "--since-seq", "-1")
    assert result.exit_code == 2


def test_the_live_view_reads_ctr_per_arm_from_the_real_prometheus(tmp_path: Path) -> None:
    """A real gateway (Record only: Triton is not needed) counts SYNTHETIC attributed events;
    a real Prometheus scrapes it; `seminar ab report --prometheus` prints CTR per arm."""
    config = two_arms((90, 10))
    config_path = tmp_path / "ab.yaml"
    write_config(config, config_path)
    url = f"sqlite://{tmp_path / 'events.db'}"
    gateway = GatewayProcess(
        config_path, triton_url=f"127.0.0.1:{free_port()}", log_path=tmp_path / "gateway.log",
        wait_serving=False, event_log=url,
    ).start()  # fmt: skip
    try:
        control, treatment = config.arms
        planted = {control.name: (40, 4), treatment.name: (20, 5)}  # (impressions, clicks)
        events = []
        for arm in (control, treatment):
            shown, clicks = planted[arm.name]
            request_id = new_request_id(arm.name, arm.model, arm.version)
            events += [
                Event(f"{arm.name}{position}", position, 7, "",
                      EventType.REC if position <= clicks else EventType.IMPRESSION,
                      position <= clicks, request_id=request_id, position=position)
                for position in range(1, shown + 1)
            ]  # fmt: skip
        record_via_gateway(gateway.address, events)
        with PrometheusProcess(
            f"127.0.0.1:{free_port()}", f"127.0.0.1:{gateway.metrics_port}",
            port=free_port(),
        ) as prometheus:  # fmt: skip
            prometheus.wait_scraped(jobs=("gateway",))
            assert wait_until(lambda: len(live_view(prometheus.url)) == 2, timeout_s=10)
            live = {arm.arm: arm for arm in live_view(prometheus.url)}
            result = CliRunner().invoke(
                app, ["ab", "report", "--config", str(config_path), "--prometheus", prometheus.url]
            )
    finally:
        gateway.stop()
    print(result.output)
    assert result.exit_code == 0, result.output
    assert live["control"].ctr == 0.1 and live["treatment"].ctr == 0.25
    assert (live["treatment"].impressions, live["treatment"].clicks) == (20, 5)
    assert "| control | seminar_v1:1 | 40 | 4 | 10.000% |" in result.output
    assert "| treatment | seminar_v2:2 | 20 | 5 | 25.000% |" in result.output
    assert "no confidence interval" in result.output
