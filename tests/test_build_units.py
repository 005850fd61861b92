"""build/ units that need no trained model: the pipeline declaration, config generation and
validation, the parity gate itself, TensorRT command lines and the gpu refusal."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from tritonclient.grpc import model_config_pb2
from typer.testing import CliRunner

from seminar import contract
from seminar.build import artifacts, export, repository, tensorrt
from seminar.cli import app
from seminar.errors import ArtifactError, CheckFailed, ConflictError, UsageError
from seminar.model.config import ModelConfig

DIMS = contract.PipelineDims(d=16, h=2, k=4, t=8)


def test_pipeline_dims_come_from_the_model_config():
    dims = contract.PipelineDims.from_model_config(
        ModelConfig(dim=32, heads=3, top_k=10, query_len=6)
    )
    assert dims == contract.PipelineDims(d=32, h=3, k=10, t=6)
    specs = contract.model_specs(dims)
    assert specs[contract.PQ_RETRIEVAL_MODEL].output(contract.TOPK_EMB).dims == (3, 10, 32)
    assert specs[contract.PQ_RETRIEVAL_MODEL].output(contract.TOPK_MASK).dims == (3, 10)
    assert specs[contract.FEATURES_MODEL].output(contract.QUERY_TOKENS).dims == (6,)
    assert specs[contract.RANKING_HEAD_MODEL].output(contract.OUTPUT_SCORE).dims == (1,)


def test_pipeline_dims_name_the_model_config_field_they_miss():
    class NoTopK:
        dim, heads, query_len = 32, 3, 6

    with pytest.raises(TypeError, match=r"NoTopK has no field 'top_k' \(the pipeline's K\)"):
        contract.PipelineDims.from_model_config(NoTopK())


@pytest.mark.parametrize("field", ["d", "h", "k", "t"])
def test_pipeline_dims_reject_non_positive_sizes_naming_the_field(field):
    values = {"d": 16, "h": 2, "k": 4, "t": 8, field: 0}
    with pytest.raises(ValueError, match=f"PipelineDims.{field}"):
        contract.PipelineDims(**values)


def test_ensemble_steps_chain_every_tensor_from_a_producer():
    """Each step input is an ensemble input or an earlier step's output; score is produced."""
    available = {t.name for t in contract.ensemble_spec(DIMS).inputs}
    for step in contract.ensemble_steps():
        missing = set(step.input_map.values()) - available
        assert not missing, f"{step.model} reads {missing} before anything produces it"
        available |= set(step.output_map.values())
    assert contract.OUTPUT_SCORE in available


@pytest.mark.parametrize("target", list(contract.Target))
def test_every_generated_config_parses_and_validates(tmp_path, target):
    serving = repository.ServingConfig(graph=contract.DEFAULT_GRAPH[target])
    for spec in contract.model_specs(DIMS).values():
        native = spec.kind is contract.TritonModelKind.NATIVE
        path = tmp_path / f"{spec.name}.pbtxt"
        path.write_text(repository.to_text(repository.model_config(spec, target, serving)))
        if native and target is contract.Target.GPU:  # the C++ step runs on the CPU alone
            with pytest.raises(ArtifactError, match="cpu target's"):
                repository.validate_config(path, spec, target, serving=serving)
            continue
        config = repository.validate_config(path, spec, target, serving=serving)
        assert config.max_batch_size == serving.max_batch_size
        assert list(config.dynamic_batching.preferred_batch_size) == [128, 256, 512]
        # The fused step (one per core) takes what queued while it was busy; it waits for
        # nothing more, which would add the delay to every request.
        fused = spec.name in contract.FUSED_STEP_OF.values()
        assert config.dynamic_batching.max_queue_delay_microseconds == (0 if fused else 100)
        assert config.version_policy.HasField("all")
        gpu_engine = (
            target is contract.Target.GPU and spec.kind is contract.TritonModelKind.EXPORTED
        )
        assert config.platform == ("tensorrt_plan" if gpu_engine else "")
        assert config.backend == (
            "" if gpu_engine else contract.NATIVE_BACKEND if native else "python"
        )
        on_gpu = target is contract.Target.GPU and spec.name not in contract.QUERY_STRING_MODELS
        kind = (
            model_config_pb2.ModelInstanceGroup.KIND_GPU
            if on_gpu
            else model_config_pb2.ModelInstanceGroup.KIND_CPU
        )
        assert [g.kind for g in config.instance_group] == [kind]
        # No queue policy: a step that rejects a queued request crashes the ensemble (2.51).
        assert not config.dynamic_batching.HasField("default_queue_policy")
        params = {k: v.string_value for k, v in config.parameters.items()}
        python_graph = spec.kind is contract.TritonModelKind.EXPORTED and not gpu_engine
        assert params.get(contract.PARAM_INDEX_RANGES) == (
            contract.INDEX_RANGES_FILE if python_graph else None
        )
        reads_query = spec.name in contract.QUERY_STRING_MODELS
        want_bytes = str(serving.max_query_bytes) if reads_query else None
        assert params.get(contract.PARAM_MAX_QUERY_BYTES) == want_bytes
    pq = repository.model_config(
        contract.model_specs(DIMS)[contract.PQ_RETRIEVAL_MODEL], target, serving
    )
    assert pq.parameters[contract.PARAM_DEVICE].string_value == (
        "cuda" if target is contract.Target.GPU else "cpu"
    )
    force = pq.parameters.get(contract.PARAM_FORCE_CPU_ONLY)
    assert (force.string_value if force else None) == (
        "no" if target is contract.Target.GPU else None
    )
    path = tmp_path / "seminar.pbtxt"
    path.write_text(
        repository.to_text(repository.ensemble_config(DIMS, contract.ENSEMBLE_MODEL, 3, serving))
    )
    ens = repository.validate_config(path, contract.ensemble_spec(DIMS), target)
    assert {s.model_version for s in ens.ensemble_scheduling.step} == {3}
    assert ens.version_policy.latest.num_versions == 1


def test_execution_env_is_written_only_when_asked():
    spec = contract.model_specs(DIMS)[contract.FEATURES_MODEL]
    plain = repository.model_config(spec, contract.Target.CPU, repository.ServingConfig())
    assert contract.PARAM_EXECUTION_ENV not in plain.parameters
    env = repository.model_config(
        spec, contract.Target.CPU, repository.ServingConfig(execution_env="/opt/venv")
    )
    assert env.parameters[contract.PARAM_EXECUTION_ENV].string_value == "/opt/venv"


def test_validate_config_rejects_wrong_dims_and_garbage(tmp_path):
    specs = contract.model_specs(DIMS)
    other = contract.model_specs(contract.PipelineDims(d=16, h=2, k=5, t=8))[
        contract.RANKING_HEAD_MODEL
    ]
    path = tmp_path / "config.pbtxt"
    path.write_text(
        repository.to_text(
            repository.model_config(other, contract.Target.CPU, repository.ServingConfig())
        )
    )
    with pytest.raises(ArtifactError, match="topk_emb"):
        repository.validate_config(path, specs[contract.RANKING_HEAD_MODEL], contract.Target.CPU)
    path.write_text("name: 'x' not_a_field: 3\n")
    with pytest.raises(ArtifactError, match="not a valid Triton model config"):
        repository.parse_config(path)


def test_serving_config_rejects_bad_values():
    with pytest.raises(ValueError, match="preferred_batch_sizes"):
        repository.ServingConfig(max_batch_size=64, preferred_batch_sizes=(128,))
    with pytest.raises(ValueError, match="max_batch_size"):
        repository.ServingConfig(max_batch_size=0)
    with pytest.raises(ValueError, match="max_query_bytes must be >= 1, got -1"):
        repository.ServingConfig(max_query_bytes=-1)


def _with_queue_timeout(config) -> None:
    policy = config.dynamic_batching.default_queue_policy
    policy.timeout_action = model_config_pb2.ModelQueuePolicy.REJECT
    policy.default_timeout_microseconds = 3_000_000
    policy.allow_timeout_override = True


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_with_queue_timeout, "a queue policy lets Triton end ensemble requests early"),
        (lambda c: c.ClearField("dynamic_batching"), "need dynamic_batching"),
        (
            lambda c: c.parameters.pop(contract.PARAM_MAX_QUERY_BYTES),
            "max_query_bytes must be an int",
        ),
    ],
)
def test_validate_config_checks_the_queue_policy_and_the_query_limit(tmp_path, edit, message):
    spec = contract.model_specs(DIMS)[contract.FEATURES_MODEL]
    config = repository.model_config(spec, contract.Target.CPU, repository.ServingConfig())
    edit(config)
    path = tmp_path / "config.pbtxt"
    path.write_text(repository.to_text(config))
    with pytest.raises(ArtifactError, match=message):
        repository.validate_config(
            path, spec, contract.Target.CPU, serving=repository.ServingConfig()
        )


def test_index_ranges_round_trip_and_bad_files_are_named(tmp_path):
    spec = contract.model_specs(DIMS)[contract.ITEM_ENCODER_MODEL]
    path = artifacts.write_index_ranges(
        tmp_path, spec, {contract.ITEM_INDEX: 9744, contract.QUERY_TOKENS: 50}
    )
    assert artifacts.read_index_ranges(path) == {
        contract.ITEM_INDEX: (0, 9744)
    }  # only its own inputs
    head = contract.model_specs(DIMS)[contract.RANKING_HEAD_MODEL]
    assert (
        artifacts.read_index_ranges(
            artifacts.write_index_ranges(tmp_path, head, {contract.ITEM_INDEX: 3})
        )
        == {}
    )
    path.write_text('{"item_index": [5, 5]}')
    with pytest.raises(artifacts.ArtifactError, match="not a valid index ranges file"):
        artifacts.read_index_ranges(path)


class _Doubler(nn.Module):
    """Test-only graph: query_tokens (B, T), query_text_emb (B, F) -> (B, D) with a softmax
    for the FP32 list."""

    def __init__(self, scale: float = 2.0) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, DIMS.d)
        self.scale = scale

    def forward(self, query_tokens, query_text_emb):
        x = self.emb(query_tokens).mean(1) * self.scale  # (B, T, D) -> (B, D)
        return torch.softmax(x + query_text_emb.mean(1, keepdim=True), dim=-1)


def test_parity_gate_fails_the_build_when_graph_and_module_disagree(tmp_path):
    """A graph exported from one module and compared with a different one must not pass."""
    torch.manual_seed(0)
    spec = contract.model_specs(DIMS)[contract.QUERY_ENCODER_MODEL]
    module = _Doubler().eval()
    path = export.export_onnx(module, spec, tmp_path / "q.onnx", export.ExportConfig())
    bounds = {contract.QUERY_TOKENS: 10}
    real = {
        contract.QUERY_TOKENS: np.array([[1, 2, 0, 0, 0, 0, 0, 0]], dtype=np.int64),
        contract.QUERY_TEXT_EMB: np.full((1, contract.QUERY_TEXT_DIM), 0.05, np.float32),
    }
    cases = export.parity_cases(module, path, spec, real, bounds, export.ExportConfig())
    assert [c.batch for c in cases] == [1, 1, 7, 256]
    assert max(c.max_abs_diff for c in cases) <= 1e-4
    drifted = _Doubler(scale=2.01).eval()
    drifted.load_state_dict(module.state_dict())
    with pytest.raises(CheckFailed, match=r"ONNX parity failed for query_encoder .* max abs diff"):
        export.parity_cases(drifted, path, spec, real, bounds, export.ExportConfig())
    # The graph carries the contract names and a dynamic batch dim.
    inputs, outputs = repository.onnx_tensors(path)
    assert inputs == [
        (contract.QUERY_TOKENS, "TYPE_INT64", (8,)),
        (contract.QUERY_TEXT_EMB, "TYPE_FP32", (contract.QUERY_TEXT_DIM,)),
    ]
    assert outputs == [(contract.QUERY_EMB, "TYPE_FP32", (16,))]
    # trtexec line: FP16, the batch profile, and the softmax kept FP32.
    cmd = tensorrt.trtexec_command(path, tmp_path / "q.plan", spec, tensorrt.Profile(1, 128, 1024))
    assert "--fp16" in cmd
    text = contract.QUERY_TEXT_EMB
    assert f"--minShapes={contract.QUERY_TOKENS}:1x8,{text}:1x384" in cmd
    assert f"--optShapes={contract.QUERY_TOKENS}:128x8,{text}:128x384" in cmd
    assert f"--maxShapes={contract.QUERY_TOKENS}:1024x8,{text}:1024x384" in cmd
    softmax = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Softmax"]
    assert softmax and any(
        f"{softmax[0]}:fp32" in a for a in cmd if a.startswith("--layerPrecisions")
    )


def test_profile_rejects_unordered_batches():
    with pytest.raises(ValueError, match="min_batch <= opt_batch <= max_batch"):
        tensorrt.Profile(1, 2048, 1024)


@pytest.mark.skipif(tensorrt.unavailable_reason() is None, reason="TensorRT is available here")
def test_gpu_target_without_tensorrt_fails_fast_with_one_line(tmp_path):
    repo = tmp_path / "repo"
    result = CliRunner().invoke(
        app,
        [
            "build",
            "--run",
            str(tmp_path / "no-run"),
            "--target",
            "gpu",
            "--repo",
            str(repo),
            "--version",
            "1",
        ],
    )
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "TensorRT" in lines[0], result.stderr
    assert not repo.exists() and list(tmp_path.iterdir()) == []


def test_bad_target_and_missing_run_are_one_sentence_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        app, ["build", "--run", str(tmp_path), "--target", "tpu", "--version", "1"]
    )
    assert result.exit_code == UsageError.exit_code == 2
    assert "--target must be cpu or gpu" in result.stderr
    result = runner.invoke(
        app,
        ["build", "--run", str(tmp_path / "nope"), "--repo", str(tmp_path / "r"), "--version", "1"],
    )
    assert result.exit_code == ArtifactError.exit_code == 4
    assert "nope: run directory not found" in result.stderr and "Traceback" not in result.output
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": {"dim": -1}}))
    (tmp_path / "run" / "checkpoint.safetensors").write_bytes(b"")
    result = runner.invoke(
        app,
        ["build", "--run", str(tmp_path / "run"), "--repo", str(tmp_path / "r"), "--version", "1"],
    )
    assert result.exit_code == ArtifactError.exit_code, result.stderr
    assert "config.json" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_model_card_quotes_the_quality_benchmark_when_present(tmp_path, monkeypatch):
    from seminar.build import builder

    monkeypatch.setattr(builder, "REPO_ROOT", tmp_path)
    quick = "D=32, H=4, K=20"
    assert builder._quality_report("seminar", quick) == []  # no reports/ yet
    (tmp_path / "reports").mkdir()
    quality = {"seminar": {"ndcg@10": {"mean": 0.25, "std": 0.01, "n": 3}}, "din": {}}
    (tmp_path / "reports" / "quality.json").write_text(json.dumps(quality))
    lines = builder._quality_report("seminar", quick)
    assert "| ndcg@10 | 0.2500 ± 0.0100 | 3 |" in lines
    assert builder._quality_report("din", quick) == []
    # The card says which configuration the benchmark trained, next to this version's own.
    assert any("at the configuration reports/quality.md states" in line for line in lines)
    (tmp_path / "reports" / "quality.md").write_text("Train config: {}; model overrides: {}.\n")
    assert any("another configuration than this version's: D=64, H=4, K=50" in line
               for line in builder._quality_report("seminar", quick))  # fmt: skip
    assert any("at this version's configuration (D=64, H=4, K=50)" in line
               for line in builder._quality_report("seminar", "D=64, H=4, K=50"))  # fmt: skip


def test_config_difference_names_the_first_differing_field_of_any_kind():
    """Generic over the config's fields: scalars, nested messages, repeated fields, maps."""
    spec = contract.model_specs(DIMS)[contract.PQ_RETRIEVAL_MODEL]
    base = repository.model_config(spec, contract.Target.CPU, repository.ServingConfig())
    assert (
        repository.config_difference(
            base, repository.model_config(spec, contract.Target.CPU, repository.ServingConfig())
        )
        is None
    )
    cases = [
        (
            repository.ServingConfig(max_batch_size=64, preferred_batch_sizes=(64,)),
            "max_batch_size",
        ),
        (
            repository.ServingConfig(max_queue_delay_us=500),
            "dynamic_batching.max_queue_delay_microseconds",
        ),
        (
            repository.ServingConfig(preferred_batch_sizes=(128,)),
            "dynamic_batching.preferred_batch_size",
        ),
        (repository.ServingConfig(cpu_instances=2), "instance_group[0].count"),
        (repository.ServingConfig(execution_env="/opt/env"), "parameters['EXECUTION_ENV_PATH']"),
    ]
    for serving, field in cases:
        other = repository.model_config(spec, contract.Target.CPU, serving)
        assert repository.config_difference(base, other)[0] == field
    gpu = repository.model_config(spec, contract.Target.GPU, repository.ServingConfig())
    assert repository.config_difference(base, gpu)[:2] == ("instance_group[0].kind", "KIND_CPU")
    # A field nothing in ServingConfig writes today is still compared.
    extra = model_config_pb2.ModelConfig()
    extra.CopyFrom(base)
    extra.dynamic_batching.default_queue_policy.max_queue_size = 8
    assert repository.config_difference(base, extra) == (
        "dynamic_batching.default_queue_policy.max_queue_size",
        "0",
        "8",
    )


def test_display_path_is_relative_inside_the_current_directory_else_the_folder_name(
    tmp_path, monkeypatch
):
    from seminar.build import builder

    (tmp_path / "runs" / "quick").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert builder.display_path(tmp_path / "runs" / "quick") == "runs/quick"
    assert builder.display_path(Path("runs/quick")) == "runs/quick"
    assert builder.display_path(tmp_path.parent / "elsewhere" / "data") == "data"


def test_exported_graphs_carry_no_stack_traces_or_file_paths(tmp_path):
    """The dynamo exporter writes each node's Python stack trace (absolute source paths)."""
    spec = contract.model_specs(DIMS)[contract.QUERY_ENCODER_MODEL]
    path = export.export_onnx(_Doubler().eval(), spec, tmp_path / "q.onnx", export.ExportConfig())
    blob = path.read_bytes()
    checkout = str(Path(__file__).resolve().parents[1]).encode()
    assert checkout not in blob and str(tmp_path).encode() not in blob
    model = onnx.load(str(path))
    assert not model.metadata_props and not model.graph.metadata_props
    assert not any(n.metadata_props or n.doc_string for n in model.graph.node)
    assert not any(v.metadata_props for v in (*model.graph.value_info, *model.graph.input))
    onnx.checker.check_model(model, full_check=True)


_HOLD_LOCK = """
import sys, time
from pathlib import Path
from seminar.build.lock import RepositoryLock
with RepositoryLock(Path(sys.argv[1]), "build", 7):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_the_repository_lock_names_its_holder_and_a_killed_holder_releases_it(tmp_path):
    import signal
    import subprocess
    import sys

    from seminar.build import lock

    repo = tmp_path / "repo"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(repo)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert lock.lock_path(repo).parent == tmp_path, "beside the repository, not inside it"
        assert not repo.exists()
        told: list[str] = []
        with pytest.raises(ConflictError), lock.RepositoryLock(repo, "retire", 3, told.append, 0.5):
            pass
        assert told == [
            f"{repo} is locked by pid {holder.pid} (build of version 7); waiting for it to finish"
        ]
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        with lock.RepositoryLock(repo, "retire", 3, told.append, timeout_s=5) as held:
            assert lock.read_holder(held.path) == lock.LockHolder(os.getpid(), "retire", 3)
        assert len(told) == 1, "the lock was free: nobody to wait for"
        assert lock.read_holder(lock.lock_path(repo)) is None, "released: no holder recorded"
    finally:
        holder.kill()
        holder.wait(timeout=10)


@pytest.mark.parametrize(
    ("version", "strongly_typed"),
    [
        ("10.0.1", False),
        ("10.5.0", False),
        ("10.11.0.33", False),
        ("10.12.0", True),
        ("11.0", True),
    ],
)
def test_tensorrt_build_plan_follows_the_deprecations(version, strongly_typed):
    plan = tensorrt.build_plan(version)
    assert plan.strongly_typed is strongly_typed
    flags = plan.trtexec_flags(["ln"])
    if strongly_typed:  # FP16 flag, precision constraints and per-layer precision are gone
        assert flags == ["--stronglyTyped"] and not plan.fp16_flag and not plan.per_layer_fp32
    else:
        assert flags[:2] == ["--fp16", "--precisionConstraints=obey"]
        assert "--layerPrecisions=ln:fp32" in flags


@pytest.mark.parametrize(
    ("version", "message"),
    [
        ("8.6.1", r"needs TensorRT >= 10 .* found 8.6.1"),
        ("12.0", "newer than this build code"),
        ("ten", "cannot read TensorRT version 'ten'"),
    ],
)
def test_tensorrt_build_plan_refuses_versions_it_cannot_drive(version, message):
    with pytest.raises(UsageError, match=message):
        tensorrt.build_plan(version)


def test_engine_parity_feeds_a_cold_start_row():
    specs = contract.model_specs(contract.PipelineDims(d=8, h=2, k=3, t=4)).values()
    spec = next(s for s in specs if any(t.name == contract.TOPK_MASK for t in s.inputs))
    feeds = tensorrt.parity_feeds(spec, batch=5, iterations=2)
    for feed in feeds:
        mask = feed[contract.TOPK_MASK]
        assert mask.shape[0] == 5 and not mask[0].any() and mask[1:].any()
        assert set(feed) == {t.name for t in spec.inputs}
