"""Fast tests of the gateway's pure parts: A/B bucketing, config validation, request validation,
catalog, ranking helpers, generated stubs, and the CLI's bad-input paths. No servers."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from seminar.clients.catalog import Catalog
from seminar.clients.config import (
    Arm,
    ExperimentConfig,
    bucket,
    load_config,
    write_config,
)
from seminar.clients.gateway import validate
from seminar.clients.proto import ranker_pb2
from seminar.clients.scoring import rank, spearman
from seminar.contract import AB_BUCKETS, INPUT_ITEM_ID, INPUT_QUERY, INPUT_USER_ID
from seminar.errors import DataError, ServiceError, UsageError
from seminar.serving.client import request_arrays

N_USERS = 100_000


def _config(*weights: float, salt: str = "exp-1") -> ExperimentConfig:
    arms = tuple(Arm(f"arm{i}", f"seminar_v{i + 1}", i + 1, w) for i, w in enumerate(weights))
    return ExperimentConfig(salt=salt, arms=arms)


@pytest.mark.parametrize("weights", [(50, 50), (70, 30), (0.9, 0.1), (50, 30, 20), (1, 0)])
def test_arm_split_over_100k_users_matches_weights(weights: tuple[float, ...]) -> None:
    config = _config(*weights)
    counts = Counter(config.assign(str(u)).name for u in range(N_USERS))
    total = sum(weights)
    for i, w in enumerate(weights):
        share = counts.get(f"arm{i}", 0) / N_USERS
        assert abs(share - w / total) <= 0.01, (weights, i, share)


def test_assignment_is_sticky_and_salted() -> None:
    users = [str(u) for u in range(0, N_USERS, 7)]
    a = _config(50, 50)
    again = _config(50, 50)  # a fresh object, as after a reload: same answer
    assert [a.assign(u) for u in users] == [again.assign(u) for u in users]
    assert bucket("exp-1", "42") == bucket("exp-1", "42")
    # Another salt reshuffles: about half the users change arm.
    other = _config(50, 50, salt="exp-2")
    moved = sum(a.assign(u).name != other.assign(u).name for u in users) / len(users)
    assert 0.45 < moved < 0.55


def test_raising_one_weight_only_moves_users_into_that_arm() -> None:
    before, after = _config(50, 50), _config(80, 20)
    moves = Counter((before.assign(str(u)).name, after.assign(str(u)).name) for u in range(20_000))
    assert moves[("arm0", "arm1")] == 0  # nobody leaves the arm that grew
    assert abs(moves[("arm1", "arm0")] / 20_000 - 0.30) < 0.01


def _binomial_bound(share: float, n: int = N_USERS) -> float:
    """Five standard deviations of a share measured over n independent users."""
    return 5 * (share * (1 - share) / n) ** 0.5 + 1 / n


@pytest.mark.parametrize(
    ("before", "after", "changed"),
    [
        ((1, 1, 1), (2, 1, 1), 0),  # the case: once 1,696 of 20,000 moved from C to B
        ((1, 1, 1), (1, 1, 3), 2),  # the last arm in file order
        ((1, 2, 3, 4), (1, 2, 6, 4), 2),
        ((2, 1, 1), (1, 1, 1), 0),  # lowering
        ((1, 1, 1, 1), (1, 0, 1, 1), 1),  # down to 0: its users spread over the others
        ((0, 1, 1), (5, 1, 1), 0),  # a treatment ramped up from 0
    ],
)
def test_a_weight_change_moves_users_only_into_or_out_of_the_changed_arm(
    before: tuple[float, ...], after: tuple[float, ...], changed: int
) -> None:
    """Rendezvous bucketing with 3-4 arms over 100k ids: raising arm `changed` moves users only
    into it, lowering it only out of it, never between the arms whose weight stayed; and the
    number moved is the change of its share."""
    old, new = _config(*before), _config(*after)
    moves = Counter((old.assign(str(u)).name, new.assign(str(u)).name) for u in range(N_USERS))
    name = f"arm{changed}"
    moved = {pair: n for pair, n in moves.items() if pair[0] != pair[1]}
    raised = after[changed] > before[changed]
    for (source, target), count in moved.items():
        assert (target if raised else source) == name, (source, target, count)
    share_change = abs(new.shares()[name] - old.shares()[name])
    assert abs(sum(moved.values()) / N_USERS - share_change) <= _binomial_bound(share_change)
    for i, weight in enumerate(after):  # the split after the change matches the weights
        count = sum(n for (_, target), n in moves.items() if target == f"arm{i}")
        share = weight / sum(after)
        assert abs(count / N_USERS - share) <= _binomial_bound(share), (i, count)


def test_shares_are_the_weights_and_bucket_covers_its_range() -> None:
    assert _config(1, 1, 2).shares() == {"arm0": 0.25, "arm1": 0.25, "arm2": 0.5}
    assert _config(0, 3).shares() == {"arm0": 0.0, "arm1": 1.0}
    assert {_config(0, 3).assign(str(u)).name for u in range(1000)} == {"arm1"}
    assert all(0 <= bucket("s", str(u)) < AB_BUCKETS for u in range(1000))


GOOD = {
    "salt": "s",
    "arms": [
        {"name": "a", "model": "seminar_v1", "version": 1, "weight": 1},
        {"name": "b", "model": "seminar_v2", "version": 2, "weight": 1},
    ],
    "shadow": {"name": "sh", "model": "seminar_v2", "version": 2},
    "limits": {"max_candidates": 10, "max_query_bytes": 8, "deadline_ms": 100},
}


def _with(path: list, value: object) -> dict:
    import copy

    raw = copy.deepcopy(GOOD)
    node = raw
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return raw


_DELETE = object()


def test_config_round_trips(tmp_path: Path) -> None:
    config = ExperimentConfig.from_dict(GOOD)
    path = tmp_path / "ab.yaml"
    write_config(config, path)
    assert load_config(path) == config
    assert config.shadow is not None and config.shadow.model_version == "seminar_v2:2"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (_with(["salt"], ""), "salt"),
        (_with(["arms"], []), "arms"),
        (_with(["arms", 0, "weight"], -1), "weight"),
        (_with(["arms", 0, "version"], 0), "version"),
        (_with(["arms", 0, "version"], "one"), "version"),
        (_with(["arms", 1, "name"], "a"), "duplicate"),
        (_with(["arms", 0, "model"], _DELETE), "missing"),
        (_with(["arms", 0, "modle"], "x"), "modle"),
        (_with(["arms", 0, "weight"], 0) | {"arms": [GOOD["arms"][0] | {"weight": 0}]}, "weights"),
        (_with(["shadow", "weight"], 3), "weight"),
        (_with(["limits", "max_candidates"], 0), "max_candidates"),
        (_with(["limits", "deadline"], 5), "deadline"),
        (_with(["tenant"], "x"), "tenant"),
        (["not", "a", "mapping"], "mapping"),
    ],
)
def test_invalid_configs_are_rejected_naming_the_field(
    tmp_path: Path, raw: object, field: str
) -> None:
    path = tmp_path / "ab.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UsageError, match=field) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_unreadable_and_malformed_config_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("salt: [unclosed\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_config(bad)


CATALOG = Catalog(np.array([1, 2, 3, 5, 8, 13], dtype=np.int64), "test")
LIMITS_CONFIG = ExperimentConfig.from_dict(GOOD)  # max 10 candidates, 8 query bytes


def _req(user: str = "7", query: str = "", ids: list[int] | None = None) -> ranker_pb2.RankRequest:
    return ranker_pb2.RankRequest(
        user_id=user, query=query, candidate_ids=[1, 2, 3] if ids is None else ids
    )


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (_req(ids=[]), "empty"),
        (_req(ids=[1] * 11), "over the limit of 10"),
        (_req(ids=[1, 4, 99]), "unknown item id"),
        (_req(query="ü" * 5), "10 bytes, over the limit of 8"),
        (_req(user=""), "user_id"),
        (_req(user="abc"), "user_id"),
        (_req(user="-3"), "user_id"),
        (_req(user="1.5"), "user_id"),
        (_req(user=str(2**63)), "user_id"),
        (_req(user="١٢"), "user_id"),  # Arabic-Indic digits are decimal to Python, not to us
    ],
)
def test_every_invalid_request_type_is_refused(request_: object, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        validate(request_, LIMITS_CONFIG, CATALOG)


def test_valid_request_passes_and_cold_users_are_accepted() -> None:
    valid = validate(_req(user="999999", query="space", ids=[13, 1]), LIMITS_CONFIG, CATALOG)
    assert valid.user_id == 999999 and valid.candidate_ids.tolist() == [13, 1]
    # Without a catalog, unknown ids are the model's business (OOV embedding).
    assert validate(_req(ids=[424242]), LIMITS_CONFIG, None).candidate_ids.tolist() == [424242]


def test_catalog_sources(tmp_path: Path) -> None:
    np.save(tmp_path / "ids.npy", np.array([5, 3, 9]))
    assert Catalog.load(tmp_path / "ids.npy").unknown(np.array([3, 4, 9, 10])).tolist() == [4, 10]
    repo = tmp_path / "repo"
    for v, ids in ((1, [1, 2]), (2, [1, 2, 3])):
        (repo / "features" / str(v)).mkdir(parents=True)
        np.save(repo / "features" / str(v) / "item_ids.npy", np.array(ids))
    assert len(Catalog.load(repo)) == 3  # the newest version's map
    (tmp_path / "data" / "arrays").mkdir(parents=True)
    np.save(tmp_path / "data" / "arrays" / "item_ids.npy", np.array([7]))
    assert Catalog.load(tmp_path / "data").item_ids.tolist() == [7]
    with pytest.raises(DataError, match="no item catalog"):
        Catalog.load(tmp_path / "nothing")
    np.save(tmp_path / "floats.npy", np.array([1.5]))
    with pytest.raises(DataError, match="integer array"):
        Catalog.load(tmp_path / "floats.npy")


def test_request_arrays_follow_the_ensemble_contract() -> None:
    arrays = request_arrays(42, "space opera", np.array([3, 1, 2]))
    assert arrays[INPUT_USER_ID].shape == (3, 1) and arrays[INPUT_USER_ID].dtype == np.int64
    assert arrays[INPUT_ITEM_ID][:, 0].tolist() == [3, 1, 2]
    assert arrays[INPUT_QUERY][0, 0] == b"space opera"


def test_rank_sorts_best_first_and_spearman() -> None:
    ids, scores = rank(np.array([10, 20, 30]), np.array([0.1, 0.9, 0.5], dtype=np.float32))
    assert ids.tolist() == [20, 30, 10] and scores.tolist() == sorted(scores.tolist(), reverse=True)
    x = np.array([0.3, 0.1, 0.2, 0.9])
    assert spearman(x, x * 2 + 1) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)


def test_generated_stubs_are_up_to_date(tmp_path: Path) -> None:
    from seminar.clients.proto import generate

    for path in generate.generate(tmp_path):
        committed = generate.HERE / path.name
        assert filecmp.cmp(path, committed, shallow=False), (
            f"{committed} is stale: run python -m seminar.clients.proto.generate"
        )


def _seminar(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seminar.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_gateway_cli_refuses_bad_config_with_one_sentence(tmp_path: Path) -> None:
    missing = _seminar("gateway", "--config", str(tmp_path / "none.yaml"), "--metrics-port", "0")
    assert missing.returncode == 2
    assert "none.yaml" in missing.stderr and "Traceback" not in missing.stderr
    bad = tmp_path / "ab.yaml"
    bad.write_text(yaml.safe_dump(_with(["arms", 0, "weight"], -2)))
    result = _seminar("gateway", "--config", str(bad), "--metrics-port", "0")
    assert result.returncode == 2 and "weight" in result.stderr
    assert "Traceback" not in result.stderr


def test_client_cli_refuses_bad_arguments() -> None:
    both = _seminar(
        "client", "rank", "--user", "1", "--candidates", "1", "--gateway", "x:1", "--triton", "y:1"
    )
    assert both.returncode == 2 and "exactly one" in both.stderr
    ids = _seminar(
        "client", "rank", "--user", "1", "--candidates", "1,a", "--gateway", "127.0.0.1:1"
    )
    assert ids.returncode == 2 and "--candidates" in ids.stderr
    down = _seminar(
        "client",
        "rank",
        "--user",
        "1",
        "--candidates",
        "1",
        "--gateway",
        "127.0.0.1:1",
        "--timeout",
        "2",
    )
    assert down.returncode == ServiceError.exit_code == 6
    assert "UNAVAILABLE" in down.stderr and "Traceback" not in down.stderr


def test_load_and_perf_clis_refuse_bad_inputs(tmp_path: Path) -> None:
    no_data = _seminar("load", "--gateway", "127.0.0.1:1", "--data", str(tmp_path / "nope"))
    assert no_data.returncode == DataError.exit_code == 3
    assert "not a prepared dataset" in no_data.stderr
    assert "Traceback" not in no_data.stderr
    bad_rate = _seminar("load", "--gateway", "127.0.0.1:1", "--data", str(tmp_path), "--rate", "-1")
    assert bad_rate.returncode == 2 and "rate" in bad_rate.stderr
    bad_range = _seminar(
        "perf", "--triton", "127.0.0.1:1", "--data", str(tmp_path), "--concurrency", "8:1"
    )
    assert bad_range.returncode == 2 and "concurrency" in bad_range.stderr


def test_same_ranking_reports_where_scores_differ() -> None:
    from seminar.clients.client import RankResult, same_ranking

    served = RankResult([2, 1], [0.9, 0.1], "a", "m:1")
    assert same_ranking(served, RankResult([1, 2], [0.1, 0.9], "", "m:1")) is None
    assert "item 1" in same_ranking(served, RankResult([2, 1], [0.9, 0.2], "", "m:1"))
    assert same_ranking(served, RankResult([2, 3], [0.9, 0.1], "", "m:1")) == "different item sets"


def test_gateway_cli_refuses_a_taken_port(tmp_path: Path) -> None:
    import socket

    config = tmp_path / "ab.yaml"
    config.write_text(yaml.safe_dump(GOOD))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _seminar(
            "gateway", "--config", str(config), "--port", str(port), "--metrics-port", "0"
        )
    assert result.returncode == ServiceError.exit_code == 6
    assert f"127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
