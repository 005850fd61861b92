"""Trainer, checkpoints, evaluation, scoring and CLI on real MovieLens and SYNTHETIC data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from seminar.cli import app
from seminar.training.metrics import METRIC_NAMES
from tests.support.training import TINY_MODEL, TINY_TRAIN, train_tiny

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


# ---- the quick run and its files -----------------------------------------------------------


def test_quick_run_writes_a_self_describing_run(quick_run: Path, movielens_data: Path) -> None:
    from seminar.data.dataset import PreparedDataset
    from seminar.training.checkpoint import load_run

    for name in ("checkpoint.safetensors", "config.json", "metrics.json", "curve.png"):
        assert (quick_run / name).is_file(), name
    config = json.loads((quick_run / "config.json").read_text())
    assert config["data"]["checksum"] == PreparedDataset.load(movielens_data).checksum
    assert config["git_commit"] and config["model"]["kind"] == "seminar"
    run = load_run(quick_run)  # no flags: the config rebuilds the model
    assert run.model.config.dim == TINY_MODEL["dim"]
    metrics = json.loads((quick_run / "metrics.json").read_text())
    assert set(metrics["test"]) == set(METRIC_NAMES)
    assert metrics["pretrain_loss"], "SEMINAR pretrains by default"


def test_saved_checkpoint_holds_trained_per_head_parameters(quick_run: Path) -> None:
    from safetensors.torch import load_file

    from seminar.model import ModelConfig, SeminarModel

    state = load_file(str(quick_run / "checkpoint.safetensors"))
    config = ModelConfig.from_dict(json.loads((quick_run / "config.json").read_text())["model"])
    torch.manual_seed(config.dim + 1)  # any fresh model: trained weights must differ from it
    fresh = SeminarModel(config).state_dict()
    for name in (
        "ranking_head.w_q",
        "ranking_head.w_k",
        "ranking_head.w_v",
        "ranking_head.w_o.weight",
    ):
        assert state[name].shape == fresh[name].shape
        assert state[name].shape[0] == config.heads or name.endswith("w_o.weight")
    # G was trained (it starts as the identity).
    assert not torch.equal(state["item_encoder.proj.id.weight"], torch.eye(config.dim))


def test_evaluate_cli_prints_every_metric(quick_run: Path) -> None:
    result = invoke("evaluate", "--run", quick_run, "--split", "valid", "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert set(metrics) == set(METRIC_NAMES)
    assert 0.0 <= metrics["ndcg@10"] <= metrics["hit@10"] <= metrics["hit@50"] <= 1.0
    assert metrics["auc"] > 0.5  # even a tiny model beats chance on MovieLens


def test_pretraining_then_finetuning_restores_the_tables(movielens_data: Path) -> None:
    from seminar.data.dataset import PreparedDataset
    from seminar.training.batches import training_targets
    from seminar.training.config import TrainConfig
    from seminar.training.trainer import DistContext, finetune_model, model_config_for, pretrain

    ds = PreparedDataset.load(movielens_data)
    config = model_config_for(ds, "seminar", **TINY_MODEL)
    tc = TrainConfig(**{**TINY_TRAIN, "max_train_targets": 256})
    state, log = pretrain(ds, config, tc, training_targets(ds, 256, 0), DistContext())
    assert log and all(np.isfinite(r["total"]) for r in log)
    fresh = finetune_model(config, ds, None)
    model = finetune_model(config, ds, state)
    restored = model.state_dict()
    for name in ("item_encoder.id_table.weight", "item_encoder.text_proj.weight",
                 "item_encoder.attr_table.weight", "query_encoder.tokens.weight"):  # fmt: skip
        assert torch.equal(restored[name], state[name]), name
        assert not torch.equal(restored[name], fresh.state_dict()[name]), name
    assert torch.equal(model.item_encoder.proj["id"].weight, torch.eye(config.dim))  # G fresh


# ---- scoring ------------------------------------------------------------------------------


def test_score_cli_matches_the_python_function_in_item_order(
    quick_run: Path, movielens_data: Path
) -> None:
    from seminar.data.dataset import PreparedDataset
    from seminar.training.scoring import score_request

    ds = PreparedDataset.load(movielens_data)
    user = int(ds.user_ids[3])
    items = [int(ds.item_ids[i]) for i in (5, 50, 500)]
    result = invoke("score", "--run", quick_run, "--user", user, "--query", "dark comedy",
                    "--items", ",".join(map(str, items)), "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)["scores"]
    assert scores == pytest.approx(score_request(quick_run, user, "dark comedy", items), abs=1e-6)
    reversed_scores = score_request(quick_run, user, "dark comedy", items[::-1])
    assert reversed_scores == pytest.approx(scores[::-1], abs=1e-6)


def test_score_matches_the_evaluation_harness(quick_run: Path, movielens_data: Path) -> None:
    # score_request with the history before the test target = the evaluated 1 + 99 list.
    from seminar.data.dataset import PreparedDataset
    from seminar.training.checkpoint import load_run
    from seminar.training.evaluate import score_split
    from seminar.training.scoring import score_indices

    run = load_run(quick_run)
    ds = PreparedDataset.load(movielens_data)
    scores, users = score_split(run.model, ds, "test", max_users=3)
    u = int(users[2])
    pos = int(ds.test_pos[u])
    history = ds.history(u, before=pos)
    items = [int(ds.seq_item[pos]), *map(int, ds.test_negatives[u][:9])]
    query = int(ds.seq_query[pos])
    tokens = ds.query_tokens[query].tolist()
    got = score_indices(
        run.model,
        tokens,
        items,
        history.item,
        history.query,
        query_text_emb=ds.query_text_emb[query],
    )
    assert got == pytest.approx(scores[2, :10].tolist(), abs=1e-4)


def test_cold_start_history_is_scored(quick_run: Path) -> None:
    from seminar.training.checkpoint import load_run
    from seminar.training.scoring import score_indices

    model = load_run(quick_run).model
    empty = score_indices(model, [0] * 8, [2, 3, 4], [], [])
    assert len(empty) == 3 and all(np.isfinite(empty))
    one = score_indices(model, [0] * 8, [2, 3, 4], [5], [0])
    assert empty != one  # the history matters when there is one


def test_score_unknown_user_is_a_clear_error(quick_run: Path) -> None:
    result = invoke("score", "--run", quick_run, "--user", 987654321, "--items", "1,2")
    assert result.exit_code == 2
    assert "user 987654321 is not in the dataset" in result.output


# ---- bad inputs ---------------------------------------------------------------------------


def test_missing_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    result = invoke("train", "--data", tmp_path / "nope", "--out", tmp_path / "run")
    assert result.exit_code == 3
    assert "data directory not found" in result.output and "Traceback" not in result.output


def test_unknown_model_name_is_rejected(tmp_path: Path) -> None:
    result = invoke("train", "--data", tmp_path, "--out", tmp_path / "run", "--model", "bert")
    assert result.exit_code == 2
    assert "bert" in result.output and "seminar" in result.output


def test_incompatible_checkpoint_is_a_clear_error(quick_run: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "checkpoint.safetensors").write_bytes(
        (quick_run / "checkpoint.safetensors").read_bytes()
    )
    config = json.loads((quick_run / "config.json").read_text())
    config["model"]["dim"] = 24  # the tensors were saved with dim 16
    (broken / "config.json").write_text(json.dumps(config))
    result = invoke("evaluate", "--run", broken, "--json")
    assert result.exit_code == 4
    assert "incompatible" in result.output and "checkpoint.safetensors" in result.output
    result = invoke("evaluate", "--run", tmp_path / "absent")
    assert result.exit_code == 4 and "run directory not found" in result.output


def test_pq_gsu_without_artifacts_is_a_clear_error(quick_run: Path, tmp_path: Path) -> None:
    result = invoke("score", "--run", quick_run, "--user", 1, "--items", "1", "--gsu", "pq",
                    "--pq-dir", tmp_path / "missing")  # fmt: skip
    assert result.exit_code == 4 and "PQ artifact directory not found" in result.output


# ---- learning on planted truth, and DDP -----------------------------------------------------


def test_model_recovers_planted_interests_on_synthetic_data(
    synthetic_data: Path, tmp_path: Path
) -> None:
    """SYNTHETIC: users follow planted topic mixtures; held-out test events must rank well."""
    from seminar.data.dataset import PreparedDataset
    from seminar.training.batches import eval_lists
    from seminar.training.metrics import ranking_metrics

    summary = train_tiny(
        synthetic_data, tmp_path / "syn", kind="twin", epochs=3, max_train_targets=4096,
        eval_users=0, pretrain=False,
    )  # fmt: skip
    # Popularity alone (no personalisation) reaches AUC ~0.75 here and the planted user mixture
    # ~0.93: the model must use the history to get clearly past popularity.
    ds = PreparedDataset.load(synthetic_data)
    _, _, candidates = eval_lists(ds, "test")
    popularity = np.bincount(
        np.asarray(ds.seq_item)[ds.train_positions()], minlength=ds.n_item_rows
    )
    jitter = np.random.default_rng(0).random(candidates.shape) * 1e-3  # break count ties
    popular = ranking_metrics(popularity[candidates] + jitter)
    assert summary["test"]["auc"] > popular["auc"] + 0.05, (summary["test"], popular)
    assert summary["test"]["hit@10"] > 0.3, summary["test"]  # chance is 0.10


def _train_cli(out: Path, data: Path, nproc: int) -> list[float]:
    args = ["train", "--data", str(data), "--out", str(out), "--model", "twin", "--no-pretrain",
            "--dim", "16", "--heads", "2", "--top-k", "8", "--max-history", "32",
            "--epochs", "1", "--batch-size", "128", "--max-train-targets", "768", "--eval-users", "32", "--json"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "seminar.cli", *args]
    else:
        torchrun = Path(sys.executable).parent / "torchrun"
        cmd = [
            str(torchrun),
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "seminar.cli",
            *args,
        ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())["train_loss"]


def test_two_process_torchrun_matches_one_process(movielens_data: Path, tmp_path: Path) -> None:
    single = _train_cli(tmp_path / "one", movielens_data, 1)
    double = _train_cli(tmp_path / "two", movielens_data, 2)
    assert len(single) == len(double) == 6
    assert single[-1] < single[0]  # it learns
    np.testing.assert_allclose(double, single, rtol=1e-4, atol=1e-5)
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["world_size"] == 2


def test_resume_continues_from_the_saved_state(
    quick_run: Path, tmp_path: Path, movielens_data: Path
) -> None:
    """A finished run resumed with the same config trains no further and gives the same model."""
    import shutil

    from safetensors.torch import load_file

    copy = tmp_path / "resumed"
    shutil.copytree(quick_run, copy)
    before = load_file(str(copy / "checkpoint.safetensors"))
    summary = train_tiny(movielens_data, copy, resume=True)
    after = load_file(str(copy / "checkpoint.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    original = json.loads((quick_run / "metrics.json").read_text())
    assert summary["test"] == pytest.approx(original["test"], abs=1e-6)
    assert summary["valid"] == original["valid"]
    from seminar.errors import ConflictError
    from seminar.training.config import TrainConfig
    from seminar.training.trainer import train_run

    with pytest.raises(ConflictError, match="different configuration"):
        train_run(movielens_data, copy, "seminar", TrainConfig(**{**TINY_TRAIN, "lr": 0.5}),
                  dict(TINY_MODEL), resume=True)  # fmt: skip
