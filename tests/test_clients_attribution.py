"""Attribution (seminar.clients.attribution): request ids that name the arm and version that
served a ranking, and the gateway's impression and click counters, through a real gateway
process in front of a real tritonserver and a real SQLite event log, read on the real
/metrics."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from seminar.clients.attribution import Served, new_request_id, parse_request_id
from seminar.clients.client import rank_via_gateway, record_via_gateway
from seminar.clients.config import Arm, ExperimentConfig
from seminar.clients.workload import RankCall
from seminar.events import Event, EventLimits, EventType, open_event_log
from seminar.serving.triton import TritonServer
from tests.support.clients import launch_gateway, make_config, metric_samples, wait_until

URL_SAFE = re.compile(r"^[A-Za-z0-9_.~-]+$")


def test_a_request_id_names_who_served_and_is_compact_url_safe_and_fresh() -> None:
    made = {new_request_id("treatment", "seminar_v2", 2) for _ in range(1000)}
    assert len(made) == 1000  # two rankings are told apart
    for text in made:
        assert URL_SAFE.match(text) and len(text) <= EventLimits().max_id_chars
        assert parse_request_id(text) == Served("treatment", "seminar_v2", 2)
    assert Served("a", "m", 3).model_version == "m:3"
    longest = new_request_id("a" * 40, "m" * 40, 2**62)
    assert parse_request_id(longest) == Served("a" * 40, "m" * 40, 2**62)
    assert len(longest) <= EventLimits().max_id_chars


def test_a_garbled_or_forged_request_id_is_not_attributed() -> None:
    good = new_request_id("control", "seminar_v1", 1)
    hostile = [
        "", "rank-0", "control~seminar_v1~1", good[:-1], good + "x", good.upper(),
        good.replace("control", "treatment"),  # an arm edited by hand: the checksum breaks
        good.replace("~1~", "~2~"), good.replace("~", "."), "~".join(["x"] * 5),
        good + "~" + good, "ü" * 10, "a" * 10_000,
    ]  # fmt: skip
    # every single-character change of a real id
    hostile += [
        good[:i] + ("A" if good[i] != "A" else "B") + good[i + 1 :] for i in range(len(good))
    ]
    for text in hostile:
        assert parse_request_id(text) is None, text
    with pytest.raises(ValueError, match="request id"):
        new_request_id("bad name", "m", 1)


def test_a_config_refuses_arms_whose_request_ids_would_not_fit() -> None:
    long_arm = Arm("a" * 64, "m" * 64, 1, 1)
    with pytest.raises(ValueError, match="128 characters"):
        ExperimentConfig(salt="s", arms=(long_arm,))


def _outcome(gateway_metrics: str, name: str) -> dict[tuple[str, str], float]:
    return {
        (labels["arm"], labels["model_version"]): value
        for labels, value in metric_samples(gateway_metrics, name)
    }


def test_record_counts_impressions_and_clicks_against_the_arm_that_served(
    triton: TritonServer,
    gateway_arms: tuple[Arm, Arm],
    real_calls: list[RankCall],
    tmp_path: Path,
) -> None:
    url = f"sqlite://{tmp_path / 'events.db'}"
    config = make_config(gateway_arms, (50, 50))
    gateway = launch_gateway(config, triton.grpc_url, triton.repo, tmp_path, event_log=url)
    try:
        metrics = gateway.metrics_url
        names = ("seminar_gateway_impressions_total", "seminar_gateway_clicks_total")
        for name in names:  # every configured arm at 0 before any event
            assert _outcome(metrics, name) == {(a.name, a.model_version): 0 for a in config.arms}
        call = real_calls[0]
        user, candidates = int(call.user_id), [int(item) for item in call.candidate_ids[:8]]
        ranked = rank_via_gateway(gateway.address, str(user), "", candidates)
        served = parse_request_id(ranked.request_id)
        assert served is not None and (served.arm, served.model_version) == (
            ranked.arm, ranked.model_version,
        )  # fmt: skip
        clicked_at = {2, 5}
        events = [
            Event(f"ev{position}", user, item, "", EventType.REC, True, request_id=ranked.request_id,
                  position=position)
            if position in clicked_at
            else Event(f"ev{position}", user, item, "", EventType.IMPRESSION, False,
                       request_id=ranked.request_id, position=position)
            for position, item in enumerate(ranked.item_ids, start=1)
        ]  # fmt: skip
        unattributed = [
            Event("none", user, 1, "", EventType.REC, True),  # no request id
            Event("garbled", user, 1, "", EventType.REC, True, request_id=ranked.request_id[:-2]),
            Event("forged", user, 1, "", EventType.IMPRESSION, False, request_id="control~m~1"),
            Event("shown", user, 1, "", EventType.REC, False, request_id=ranked.request_id),
        ]
        answer = record_via_gateway(gateway.address, events + unattributed)
        assert answer.stored == len(events) + len(unattributed)
        record_via_gateway(gateway.address, events)  # a retry: duplicates count nothing
        key = (ranked.arm, ranked.model_version)
        other = next((a.name, a.model_version) for a in config.arms if a.name != ranked.arm)
        impressions = _outcome(metrics, names[0])
        clicks = _outcome(metrics, names[1])
        print(f"\nimpressions {impressions}\nclicks {clicks}")
        assert impressions == {key: len(candidates), other: 0}
        assert clicks == {key: len(clicked_at), other: 0}
        with open_event_log(url) as log:
            stored = log.find([event.event_id for event in events])
        assert [stored[e.event_id].event.position for e in events] == list(range(1, 9))
        # A reload publishes a newly configured arm at 0 and keeps the served arm's totals.
        third = Arm("third", gateway_arms[0].model, gateway_arms[0].version, 0)
        gateway.write_config(replace(config, arms=(*config.arms, third)))
        gateway.process.reload()
        assert wait_until(lambda: ("third", third.model_version) in _outcome(metrics, names[0]))
        assert _outcome(metrics, names[0])[key] == len(candidates)
        assert _outcome(metrics, names[1])[("third", third.model_version)] == 0
    finally:
        gateway.process.stop()
