"""`seminar simulate` and `seminar degrade`: SYNTHETIC users with planted relevance and a
planted click model drive the real gateway; a deliberately degraded arm loses.

Fast tests check the click model against its planted probabilities, the planted relevance on
real MovieLens, the degraded run, and the command's errors against a real gateway. The slow
test serves a good and a degraded version behind the real gateway and tritonserver and reads
the planted negative lift back from the real event log.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from seminar.cli import app
from seminar.clients.config import Arm
from seminar.clients.simulate import (
    ClickModel,
    PlantedRelevance,
    SimulationConfig,
    load_planted,
    position_bias,
)
from seminar.contract import FIRST_ITEM_INDEX
from seminar.data.dataset import PreparedDataset
from seminar.errors import ConflictError, DataError, ServiceError
from seminar.processes import free_port
from seminar.training.degrade import DEGRADED_FIELD, write_degraded_run
from tests.support.clients import launch_gateway, make_config

# ---- the click model -------------------------------------------------------------------------


def test_position_bias_is_one_over_log2_of_rank_plus_one() -> None:
    assert position_bias(1) == 1.0
    assert position_bias(3) == 0.5
    assert position_bias(2) == pytest.approx(1 / math.log2(3))
    assert all(position_bias(r) > position_bias(r + 1) for r in range(1, 50))
    with pytest.raises(ValueError):
        position_bias(0)


def test_clicks_follow_the_planted_probabilities_by_position_and_relevance() -> None:
    """200,000 SYNTHETIC visits of a ranking alternating relevant / not: each position's click
    rate is P(click | r, relevant) within 4.5 standard errors."""
    model = ClickModel(shown=6, p_relevant=0.7, p_other=0.1)
    flags = [True, False, True, False, True, False, True, True]  # 8 ranked, 6 shown
    rng = np.random.default_rng(123)
    visits = 200_000
    clicks = np.array([model.clicks(flags, rng) for _ in range(visits)])
    assert clicks.shape == (visits, 6)  # positions beyond `shown` are never clicked
    for rank, relevant in enumerate(flags[:6], 1):
        planted = position_bias(rank) * (0.7 if relevant else 0.1)
        standard_error = math.sqrt(planted * (1 - planted) / visits)
        assert abs(clicks[:, rank - 1].mean() - planted) < 4.5 * standard_error, rank


def test_clicks_are_reproducible_from_the_seed() -> None:
    model = ClickModel()
    flags = [True, False] * 10
    first = [model.clicks(flags, np.random.default_rng(7)) for _ in range(3)]
    again = [model.clicks(flags, np.random.default_rng(7)) for _ in range(3)]
    assert first == again
    other = [model.clicks(flags, np.random.default_rng(seed)) for seed in range(20)]
    assert len({tuple(c) for c in other}) > 1


def test_configs_refuse_impossible_settings() -> None:
    with pytest.raises(ValueError, match="p_relevant"):
        ClickModel(p_relevant=1.5)
    with pytest.raises(ValueError, match="shown"):
        SimulationConfig(candidates=5, relevant_candidates=2, click=ClickModel(shown=10))
    with pytest.raises(ValueError, match="relevant_candidates"):
        SimulationConfig(candidates=5, relevant_candidates=6, click=ClickModel(shown=5))


# ---- the planted relevance on real MovieLens -------------------------------------------------


@pytest.fixture(scope="module")
def planted(movielens_data: Path) -> PlantedRelevance:
    return load_planted(movielens_data, SimulationConfig(users=50, seed=3))


def test_relevant_items_are_unseen_items_of_the_liked_genres(
    planted: PlantedRelevance, movielens_data: Path
) -> None:
    dataset = PreparedDataset.load(movielens_data)
    genres = {name.removeprefix("genre=") for name in dataset.attributes if "genre=" in name}
    kept, eligible = 0, 0
    for user in planted.visitors()[:20]:
        liked = planted.liked_genres(user)
        assert 1 <= len(liked) <= 2 and set(liked) <= genres
        relevant = planted.relevant(user)
        history = dataset.history(dataset.user_index(user))
        seen = {dataset.item_id(i) for i in history.item.tolist() if i >= FIRST_ITEM_INDEX}
        liked_columns = [planted.genre_names.index(g) for g in liked]
        of_liked = planted.has_genre[:, liked_columns].any(axis=1)
        relevant_ids = set(planted.item_ids[relevant].tolist())
        assert relevant_ids and not relevant_ids & seen
        assert of_liked[relevant].all()
        unseen_of_liked = of_liked & ~np.isin(planted.item_ids, list(seen))
        kept += int(relevant.sum())
        eligible += int(unseen_of_liked.sum())
    # The planted coin keeps relevance_probability (0.8) of the unseen items of liked genres.
    assert kept / eligible == pytest.approx(0.8, abs=0.02)


def test_visitors_and_candidates_are_seeded(planted: PlantedRelevance) -> None:
    visitors = planted.visitors()
    assert len(set(visitors)) == 50 and visitors == planted.visitors()
    other_seed = PlantedRelevance(planted._dataset, SimulationConfig(users=50, seed=4))
    assert other_seed.visitors() != visitors
    user = visitors[0]
    candidates, relevant = planted.candidates(user, np.random.default_rng(1))
    assert len(candidates) == 50 == len(set(candidates)) and len(relevant) == 10
    assert relevant <= set(candidates)
    truth = set(planted.item_ids[planted.relevant(user)].tolist())
    assert set(candidates) & truth == relevant  # the other 40 are not relevant
    assert planted.candidates(user, np.random.default_rng(1)) == (candidates, relevant)
    assert planted.candidates(user, np.random.default_rng(2))[0] != candidates


# ---- the degraded run ------------------------------------------------------------------------


def test_a_degraded_run_permutes_every_item_table_and_says_so(
    quick_run: Path, tmp_path: Path
) -> None:
    out = write_degraded_run(quick_run, tmp_path / "degraded", seed=5)
    config = json.loads((out / "config.json").read_text())
    label = config[DEGRADED_FIELD]
    assert "DEGRADED" in label["what"] and label["seed"] == 5
    assert not (out / "metrics.json").exists()  # the source's metrics describe another model
    source = load_file(str(quick_run / "checkpoint.safetensors"))
    degraded = load_file(str(out / "checkpoint.safetensors"))
    assert set(degraded) == set(source)
    assert "item_encoder.id_table.weight" in label["permuted"]
    assert "item_encoder.item_attrs" in label["permuted"]
    num_items = config["model"]["num_items"]
    ids = source["item_encoder.id_table.weight"]
    moved = degraded["item_encoder.id_table.weight"]
    # One permutation for every table: row i of each comes from the same source row.
    row_of = {row.tobytes(): index for index, row in enumerate(ids.numpy())}
    order = [row_of[row.tobytes()] for row in moved.numpy()]
    assert order[:FIRST_ITEM_INDEX] == list(range(FIRST_ITEM_INDEX))  # PAD, OOV stay
    assert sorted(order) == list(range(num_items))
    assert np.mean(np.array(order) != np.arange(num_items)) > 0.99
    for name in label["permuted"]:
        assert torch.equal(degraded[name], source[name][order]), name
    for name in set(source) - set(label["permuted"]):
        assert torch.equal(degraded[name], source[name]), name
    with pytest.raises(ConflictError):
        write_degraded_run(quick_run, out)


# ---- the command's errors, against a real gateway --------------------------------------------


def invoke(*args: str):
    return CliRunner().invoke(app, ["simulate", *args])


def test_an_unreachable_gateway_exits_with_the_service_code(movielens_data: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    result = invoke("--gateway", address, "--data", str(movielens_data), "--timeout", "1")
    assert result.exit_code == ServiceError.exit_code, result.output
    assert f"gateway {address}: not reachable" in result.output


def test_a_gateway_without_record_exits_with_the_service_code(
    movielens_data: Path, tmp_path: Path
) -> None:
    """A real gateway started without --event-log (in front of no Triton: the probe needs
    none) is refused before any visit."""
    arms = (Arm("control", "seminar_v1", 1, 50), Arm("treatment", "seminar_v2", 2, 50))
    dead_triton = f"127.0.0.1:{free_port()}"
    gateway = launch_gateway(
        make_config(arms), dead_triton, movielens_data, tmp_path, wait_serving=False
    )
    try:
        result = invoke("--gateway", gateway.address, "--data", str(movielens_data))
    finally:
        gateway.process.stop()
    assert result.exit_code == ServiceError.exit_code, result.output
    assert "serves no Record" in result.output and "--event-log" in result.output


def test_a_gateway_that_cannot_rank_exits_with_the_service_code(
    movielens_data: Path, tmp_path: Path
) -> None:
    """Record is served, but no Triton answers behind the gateway: the first Rank fails,
    the run stops with its status, and nothing was recorded."""
    from seminar.events import open_event_log

    arms = (Arm("control", "seminar_v1", 1, 50), Arm("treatment", "seminar_v2", 2, 50))
    log_url = f"sqlite://{tmp_path / 'events.db'}"
    gateway = launch_gateway(
        make_config(arms),
        f"127.0.0.1:{free_port()}",
        movielens_data,
        tmp_path,
        wait_serving=False,
        event_log=log_url,
    )
    try:
        result = invoke("--gateway", gateway.address, "--data", str(movielens_data))
    finally:
        gateway.process.stop()
    assert result.exit_code == ServiceError.exit_code, result.output
    assert "Rank failed: UNAVAILABLE" in result.output
    with open_event_log(log_url) as log:
        assert log.high_watermark() == 0


def test_a_directory_that_is_no_dataset_exits_with_the_data_code(tmp_path: Path) -> None:
    result = invoke("--gateway", "127.0.0.1:1", "--data", str(tmp_path))
    assert result.exit_code == DataError.exit_code, result.output


def test_impossible_options_exit_with_the_usage_code(movielens_data: Path) -> None:
    result = invoke("--gateway", "127.0.0.1:1", "--data", str(movielens_data), "--shown", "60")
    assert result.exit_code == 2, result.output
    assert "shown" in result.output


# ---- a planted negative lift through the real gateway, tritonserver and event log --------------

SIMULATED_USERS = 600  # nearly every user of the dataset with a liked genre (608)
VISITS = 3  # per user: about 3 s of simulation per 1,500 visits, so power is cheap here
# Offline, the good quick run shows 0.34 of the top 10 positions relevant and the degraded one
# 0.19 (chance: 0.20), which the click model turns into expected CTRs of about 0.11 and 0.07.
# The CTR margin is half that gap, about 5 standard errors below it at 9,000 impressions
# per arm; the relevant-shown margin about half of its gap.
CTR_MARGIN = 0.02
RELEVANT_SHOWN_MARGIN = 0.08


def outcomes_by_arm(log_url: str) -> tuple[dict[str, list[int]], list]:
    """[impressions, clicks] per arm from every event of the log (attributed by request_id)."""
    from seminar.clients.attribution import outcome, parse_request_id
    from seminar.events import open_event_log

    with open_event_log(log_url) as log:
        stored = log.read_range(0, log.high_watermark())
    per_arm: dict[str, list[int]] = {}
    for record in stored:
        served = parse_request_id(record.event.request_id)
        counted = outcome(record.event)
        assert served is not None and counted is not None, record.event
        totals = per_arm.setdefault(served.arm, [0, 0])
        totals[0] += counted[0]
        totals[1] += counted[1]
    return per_arm, stored


@pytest.mark.slow
def test_a_degraded_treatment_shows_a_planted_negative_lift(model_repo, tmp_path: Path) -> None:
    """Control = the fixtures' version 1, treatment = a degraded copy of the same run built as
    version 2, both behind the real gateway in front of `seminar serve` (tritonserver) with a
    real SQLite event log. 500 SYNTHETIC users visit once; every Record is acknowledged, and
    from the log the treatment's CTR is below the control's by more than CTR_MARGIN.

    The per-arm CTR is computed here from the log (request_id -> arm, the attribution's
    outcome rule), and `seminar ab report` over the same log must call the treatment worse."""
    from seminar.clients.config import write_config
    from seminar.clients.process import GatewayProcess
    from seminar.serving.serve_process import ServeProcess
    from tests.support.build import build_cli, copy_repo
    from tests.support.clients import metric_samples
    from tests.support.serving import require_tritonserver

    require_tritonserver()
    repo = copy_repo(model_repo, tmp_path / "repo")
    degraded = write_degraded_run(model_repo.run, tmp_path / "degraded-run")
    built = build_cli(degraded, repo, 2, "--data", str(model_repo.data), "--no-polygraphy")
    assert built.exit_code == 0, built.output
    arms = (Arm("control", "seminar_v1", 1, 50), Arm("treatment", "seminar_v2", 2, 50))
    config_path = tmp_path / "ab.yaml"
    write_config(make_config(arms), config_path)
    log_url = f"sqlite://{tmp_path / 'events.db'}"
    report_path = tmp_path / "simulate.json"
    with (
        ServeProcess(repo, "--event-log", log_url, console_path=tmp_path / "serve.log") as serve,
        GatewayProcess(
            config_path, serve.grpc_url, catalog=repo, log_path=tmp_path / "gateway.log",
            event_log=log_url,
        ) as gateway,
    ):  # fmt: skip
        result = invoke(
            "--gateway", gateway.address, "--data", str(model_repo.data),
            "--users", str(SIMULATED_USERS), "--visits", str(VISITS), "--concurrency", "4", "--out", str(report_path),
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        counted = {
            (labels["arm"], name): value
            for name in ("seminar_gateway_impressions_total", "seminar_gateway_clicks_total")
            for labels, value in metric_samples(gateway.metrics_url, name)
        }
    print("\n" + result.output)
    report = json.loads(report_path.read_text())
    assert report["synthetic"] is True
    assert report["events_sent"] == report["events_acknowledged"]

    per_arm, stored = outcomes_by_arm(log_url)
    # Every event the simulator sent is in the log, once, labelled and positioned.
    assert len(stored) == report["events_sent"]
    assert all(record.event.event_id.startswith("synthetic-") for record in stored)
    assert {record.event.position for record in stored} == set(range(1, 11))
    assert set(per_arm) == {"control", "treatment"}
    for name, (impressions, clicks) in per_arm.items():
        arm = report["arms"][name]
        assert (arm["impressions"], arm["clicks"]) == (impressions, clicks)
        assert arm["users"] >= 200  # the 50/50 split gave each arm a fair share
        assert counted[(name, "seminar_gateway_impressions_total")] == impressions
        assert counted[(name, "seminar_gateway_clicks_total")] == clicks

    (control_shown, control_clicks), (treatment_shown, treatment_clicks) = (
        per_arm["control"],
        per_arm["treatment"],
    )
    control_ctr, treatment_ctr = control_clicks / control_shown, treatment_clicks / treatment_shown
    pooled = (control_clicks + treatment_clicks) / (control_shown + treatment_shown)
    standard_error = math.sqrt(pooled * (1 - pooled) * (1 / control_shown + 1 / treatment_shown))
    z = (control_ctr - treatment_ctr) / standard_error
    print(f"CTR control {control_ctr:.4f}, treatment {treatment_ctr:.4f}, z = {z:.2f}")
    assert control_ctr - treatment_ctr > CTR_MARGIN
    assert z > 3.0
    relevant = {
        name: arm["relevant_shown"] / arm["impressions"] for name, arm in report["arms"].items()
    }
    assert relevant["control"] - relevant["treatment"] > RELEVANT_SHOWN_MARGIN

    # `seminar ab report` over the same log reads the same planted negative lift, with a
    # confidence interval at the user level, and no sample-ratio mismatch (exit 0).
    ab = CliRunner().invoke(
        app,
        ["ab", "report", "--config", str(config_path), "--event-log", log_url,
         "--out", str(tmp_path / "ab")],
    )  # fmt: skip
    assert ab.exit_code == 0, ab.output
    verdict = ab.output.strip().splitlines()[-1]
    print(verdict)
    assert verdict.startswith("verdict: treatment worse"), verdict
