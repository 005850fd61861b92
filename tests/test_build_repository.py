"""`seminar build` end to end on the real quick-trained MovieLens run (the `model_repo` fixture):
ONNX parity of each exported graph, configs vs graphs, manifests, versions side by side,
atomicity, --force, the mismatch refusals (checkpoint, target, model-level settings) and no
path of the build machine in what is built."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from seminar import contract, manifest
from seminar.build import artifacts, builder, export, repository, tensorrt
from seminar.errors import ArtifactError, ConflictError
from tests.support.build import CHECKOUT, BuiltRepo, build_cli, copy_repo, tree_digest

pytestmark = pytest.mark.slow


def _version_files(repo: Path, version: int) -> dict[str, str]:
    out = {}
    for name in [*contract.COMPOSING_MODELS, contract.ENSEMBLE_MODEL]:
        for rel, digest in tree_digest(repo / name / str(version)).items():
            out[f"{name}/{version}/{rel}"] = digest
    for rel, digest in tree_digest(repo / contract.pinned_ensemble_name(version)).items():
        out[f"{contract.pinned_ensemble_name(version)}/{rel}"] = digest
    return out


@pytest.fixture(scope="module")
def trained(model_repo: BuiltRepo):
    from seminar.training.checkpoint import load_run

    run = load_run(model_repo.run)
    return run.model, contract.PipelineDims.from_model_config(run.model_config)


@pytest.mark.parametrize("name", contract.EXPORTED_MODELS)
def test_onnx_matches_pytorch_at_batch_1_7_256(model_repo, trained, name):
    """The served graph vs the trained module: random rows at batch 1, 7, 256 (head: 1, K-1
    and K valid slots per head) and real MovieLens rows, max abs diff <= 1e-4."""
    import onnxruntime as ort

    model, dims = trained
    spec = contract.model_specs(dims)[name]
    module = export.graph_modules(model)[name]
    session = ort.InferenceSession(str(model_repo.repo / name / "1" / contract.ONNX_FILE))
    bounds = artifacts.index_bounds(model_repo.data)
    rng = np.random.default_rng(123)
    slots = [1, dims.k - 1, dims.k] if name == contract.RANKING_HEAD_MODEL else [None]
    checked = 0
    for batch in (1, 7, 256):
        for valid in slots:
            inputs = export.random_inputs(spec, batch, bounds, rng, valid)
            diff = export.compare(module, session, spec, inputs)
            assert diff <= 1e-4, f"{name} batch {batch} valid={valid}: max abs diff {diff:.3e}"
            checked += 1
    real = artifacts.real_parity_inputs(model, model_repo.data, dims)[name]
    assert export.compare(module, session, spec, real) <= 1e-4
    assert checked == 3 * len(slots)


def test_every_config_parses_and_matches_the_exported_graphs(model_repo, trained):
    _, dims = trained
    repo, specs = model_repo.repo, contract.model_specs(dims)
    assert not (repo / contract.PIPELINE_MODEL).exists(), "a steps build writes no fused step"
    for name in contract.COMPOSING_MODELS:
        spec = specs[name]
        onnx_path = (
            repo / name / "1" / contract.ONNX_FILE if name in contract.EXPORTED_MODELS else None
        )
        config = repository.validate_config(
            repo / name / contract.CONFIG_FILE, spec, contract.Target.CPU, onnx_path
        )
        assert config.backend == "python"
        assert config.version_policy.HasField("all")
        assert (repo / name / "1" / contract.PYTHON_FILE).read_bytes() == (
            contract.backend_source_path(spec.backend_source)
        ).read_bytes()
    for ensemble in (contract.ENSEMBLE_MODEL, contract.pinned_ensemble_name(1)):
        config = repository.validate_config(
            repo / ensemble / contract.CONFIG_FILE,
            contract.ensemble_spec(dims, ensemble),
            contract.Target.CPU,
        )
        assert [s.model_version for s in config.ensemble_scheduling.step] == [1] * len(
            contract.COMPOSING_MODELS
        )
        assert (repo / ensemble / "1").is_dir()
    card = (contract.build_info_path(repo, 1).parent / contract.MODEL_CARD_FILE).read_text()
    assert "logit" in card and "git revision" in card and "movielens" in card.lower()
    info = json.loads(contract.build_info_path(repo, 1).read_text())
    assert info["dims"] == {"d": dims.d, "h": dims.h, "k": dims.k, "t": dims.t}
    assert all(
        e["max_abs_diff"] <= 1e-4 and e["polygraphy"] == "passed" for e in info["exports"].values()
    )


def test_manifests_verify_and_a_corrupted_artifact_is_detected(model_repo, tmp_path):
    for name in contract.COMPOSING_MODELS:
        assert len(manifest.verify_manifest(model_repo.repo / name / "1").files) >= 2
    pq = manifest.verify_manifest(model_repo.repo / contract.PQ_RETRIEVAL_MODEL / "1")
    assert len(pq.files) >= 4, "the PQ artifacts (codebooks, store, tables) are covered"
    repo = copy_repo(model_repo, tmp_path / "repo")
    victim = repo / contract.FEATURES_MODEL / "1" / contract.ITEM_IDS_FILE
    ids = np.load(victim)
    ids[0] += 1  # same shape, size and dtype: only the checksum can tell
    np.save(victim, ids)
    with pytest.raises(ArtifactError, match=r"item_ids\.npy: sha256"):
        manifest.verify_manifest(repo / contract.FEATURES_MODEL / "1")


def test_version_2_lands_beside_an_untouched_version_1(model_repo, tmp_path):
    repo = copy_repo(model_repo, tmp_path / "repo")
    before = _version_files(repo, 1)
    result = build_cli(model_repo.run, repo, 2, "--data", str(model_repo.data), "--no-polygraphy")
    assert result.exit_code == 0, result.output
    assert _version_files(repo, 1) == before, "version 1 changed while building version 2"
    assert sorted(builder.existing_versions(repo)) == [1, 2]
    ensemble = repository.parse_config(repo / contract.ENSEMBLE_MODEL / contract.CONFIG_FILE)
    assert {s.model_version for s in ensemble.ensemble_scheduling.step} == {2}
    pinned = repository.parse_config(repo / contract.pinned_ensemble_name(1) / contract.CONFIG_FILE)
    assert {s.model_version for s in pinned.ensemble_scheduling.step} == {1}
    # Same checkpoint, same graphs: the rebuilt ONNX is byte-identical (deterministic export).
    for name in contract.EXPORTED_MODELS:
        assert (repo / name / "2" / contract.ONNX_FILE).read_bytes() == (
            repo / name / "1" / contract.ONNX_FILE
        ).read_bytes()

    # An existing version is never overwritten without --force ...
    again = build_cli(model_repo.run, repo, 2, "--data", str(model_repo.data))
    assert again.exit_code == ConflictError.exit_code == 5
    assert "version 2 exists" in again.stderr and "--force" in again.stderr
    assert _version_files(repo, 1) == before


def _request(repo: Path, version: int, **kw) -> builder.BuildRequest:
    return builder.BuildRequest(
        repo=repo, version=version, export=export.ExportConfig(polygraphy=False), **kw
    )


def _inputs(model_repo: BuiltRepo, trained, **kw) -> builder.BuildInputs:
    from seminar.pq import PQConfig

    model, dims = trained
    pq = PQConfig(nbits=4, kmeans_iters=2, n_subspaces=8)
    return builder.BuildInputs(
        model, dims, model_repo.data, run_dir=model_repo.run, pq_config=pq, **kw
    )


def test_interrupted_builds_leave_no_partial_version(model_repo, trained, tmp_path, monkeypatch):
    repo = copy_repo(model_repo, tmp_path / "repo")
    before = tree_digest(repo)
    # A staging dir left by a killed build (its process is gone) is swept by the next build.
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = repo.parent / ".repo.v7.killed"
    stale.mkdir()
    (stale / builder.STAGING_PID_FILE).write_text(dead.stdout.strip())

    def crash(out_dir: Path) -> None:  # mid-build: graphs exported, features written
        (out_dir / "half.npy").write_bytes(b"partial")
        raise KeyboardInterrupt("simulated interrupt")

    with pytest.raises(KeyboardInterrupt):
        builder.build_version(_request(repo, 3), _inputs(model_repo, trained, write_pq=crash))
    assert tree_digest(repo) == before
    assert not list(repo.parent.glob(".repo.v*")), "staging dir left behind"

    # Interrupt the commit of a --force rebuild of version 1 after a few renames: they are
    # undone and the old version 1 comes back from the side, byte for byte.
    import os

    real_rename, calls = os.rename, []

    def flaky_rename(src, dst):
        calls.append(dst)
        if len(calls) == 4:
            raise OSError("simulated crash during commit")
        real_rename(src, dst)

    monkeypatch.setattr(builder.os, "rename", flaky_rename)
    with pytest.raises(OSError, match="simulated crash"):
        builder.build_version(_request(repo, 1, force=True), _inputs(model_repo, trained))
    monkeypatch.undo()
    assert len(calls) > 4, "the renames done before the crash were undone"
    assert tree_digest(repo) == before
    assert builder.existing_versions(repo) == [1]
    assert not list(repo.parent.glob(".repo.v*"))


def test_force_replaces_and_mismatches_are_refused(model_repo, trained, tmp_path):
    repo = copy_repo(model_repo, tmp_path / "repo")
    _, dims = trained
    with pytest.raises(ConflictError, match="version 1 exists"):
        builder.preflight(_request(repo, 1), dims)
    builder.preflight(_request(repo, 1, force=True), dims)  # allowed

    other = contract.PipelineDims(d=dims.d, h=dims.h, k=dims.k + 1, t=dims.t)
    with pytest.raises(ConflictError, match=r"does not match the versions already.*K=") as err:
        builder.preflight(_request(repo, 2), other)
    assert "\n" not in str(err.value)
    # A repository of one target refuses a build of the other (configs are shared).
    gpu_repo = copy_repo(model_repo, tmp_path / "gpu_repo")
    spec = contract.model_specs(dims)[contract.PQ_RETRIEVAL_MODEL]
    gpu_config = repository.model_config(spec, contract.Target.GPU, repository.ServingConfig())
    (gpu_repo / contract.PQ_RETRIEVAL_MODEL / contract.CONFIG_FILE).write_text(
        repository.to_text(gpu_config)
    )
    with pytest.raises(ConflictError, match="built for --target gpu"):
        builder.preflight(_request(gpu_repo, 2), dims)

    # A partly present version (a crash between renames) is reported, not silently reused.
    (repo / contract.FEATURES_MODEL / "5").mkdir()
    with pytest.raises(ConflictError, match="version 5 is partly present"):
        builder.preflight(_request(repo, 5), dims)

    builder.build_version(_request(repo, 1, force=True), _inputs(model_repo, trained))
    assert builder.existing_versions(repo) == [1]
    assert not list(repo.parent.glob(".repo.v*")), "the replaced version was not cleaned up"
    for name in contract.COMPOSING_MODELS:
        manifest.verify_manifest(repo / name / "1")


@pytest.mark.gpu
def test_tensorrt_engines_match_onnx(model_repo, trained, tmp_path):
    """GPU only: FP16 engines with the serving profile, engine vs ONNX Runtime via polygraphy."""
    reason = tensorrt.unavailable_reason()
    if reason:
        pytest.skip(reason)
    _, dims = trained
    specs = contract.model_specs(dims)
    for name in contract.EXPORTED_MODELS:
        onnx_path = model_repo.repo / name / "1" / contract.ONNX_FILE
        plan = tensorrt.build_engine(
            onnx_path, tmp_path / f"{name}.plan", specs[name], tensorrt.Profile()
        )
        assert tensorrt.engine_parity(onnx_path, plan, specs[name]) <= 1e-2


def test_cpu_build_serves_the_fast_scan_rerank_config_by_default(model_repo):
    """Without --pq-rerank a cpu build serves PQConfig.for_serving("cpu"): 4-bit fast-scan
    codes stored in faiss's block layout, then an exact rerank of a 4K shortlist."""
    from seminar.pq import PQConfig

    pq_dir = model_repo.repo / contract.PQ_RETRIEVAL_MODEL / "1" / contract.PQ_DIR
    pq_manifest = manifest.read_manifest(pq_dir).fields
    store = manifest.read_manifest(pq_dir / "store").files
    want = PQConfig.for_serving("cpu")
    assert pq_manifest["config"]["nbits"] == want.nbits == 4
    assert pq_manifest["config"]["rerank"] == want.rerank == 4
    assert "block_offsets.npy" in store
    # two codes per byte: half a byte per (modality, sub-space) code, plus each user's last
    # block of 32 events padded (MovieLens histories are short, so that padding shows)
    n_codes = store["codes.npy"].shape[1] // 16
    assert pq_manifest["bytes_per_event"] <= 0.6 * n_codes


@pytest.mark.parametrize(
    ("flags", "message"),
    [(("--pq-bits", "5"), "nbits must be 4 or 8"), (("--pq-rerank", "0"), "--pq-rerank")],
)
def test_bad_pq_flags_fail_with_a_sentence_and_write_nothing(model_repo, tmp_path, flags, message):
    repo = tmp_path / "repo"
    result = build_cli(model_repo.run, repo, 1, "--data", str(model_repo.data), *flags)
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert not repo.exists()


def test_other_model_level_settings_are_refused_before_anything_is_written(model_repo, tmp_path):
    """max_batch_size (like every field of a composing model's config.pbtxt) is shared by all
    versions of the model: a build that would rewrite it is refused, naming field, values and
    file, and the repository stays byte for byte as it was."""
    repo = copy_repo(model_repo, tmp_path / "repo")
    before = tree_digest(repo)
    result = build_cli(model_repo.run, repo, 2, "--data", str(model_repo.data), "--max-batch", "64")
    assert result.exit_code == ConflictError.exit_code == 5, result.output
    # One sentence on one line (the spinner may have drawn a frame before it).
    (refusal,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    config = repo / contract.FEATURES_MODEL / contract.CONFIG_FILE
    assert f"{config}: max_batch_size is 1024 there but 64 in this build" in refusal
    assert "shared by every version of features" in refusal and "another --repo" in refusal
    assert "Traceback" not in result.output
    assert tree_digest(repo) == before
    assert not list(tmp_path.glob(".repo.v*")), "staging dir left behind"


def test_build_json_records_every_serving_setting(model_repo):
    info = json.loads(contract.build_info_path(model_repo.repo, 1).read_text())
    serving = repository.ServingConfig(graph=contract.Graph.STEPS)  # the fixture's --graph
    assert info["serving"] == builder.serving_record(serving)
    assert info["serving"]["graph"] == "steps"
    assert info["serving"]["max_batch_size"] == serving.max_batch_size
    assert info["serving"]["preferred_batch_sizes"] == list(serving.preferred_batch_sizes)
    assert info["serving"]["cpu_instances"] == serving.cpu_instances


def test_a_dataset_without_an_event_log_mark_builds_a_store_at_watermark_0(model_repo):
    """Prepared MovieLens folded no logged event: serving's tail is every logged event."""
    from seminar.events import Watermark
    from seminar.pq.artifacts import read_store_watermark

    pq_dir = model_repo.repo / contract.PQ_RETRIEVAL_MODEL / "1" / contract.PQ_DIR
    assert read_store_watermark(pq_dir) == Watermark()
    info = json.loads(contract.build_info_path(model_repo.repo, 1).read_text())
    assert info[contract.EVENT_LOG_FIELD] == {"log_id": "", "watermark": 0}


def test_no_file_of_a_built_repository_names_a_path_of_the_build_machine(
    model_repo, tmp_path_factory
):
    """build.json, the model card and the ONNX graphs (exporter stack traces) used to carry
    absolute paths of the checkout, the run, the data and the temp dirs."""
    folders = {
        CHECKOUT,
        Path.home(),
        tmp_path_factory.getbasetemp(),
        model_repo.run,
        model_repo.data,
        model_repo.repo.parent,
    }
    spellings = {s for f in folders for s in (str(f), os.path.realpath(f)) if s != "/"}
    # Each folder itself, and anything below it.
    needles = {s.encode() for s in spellings} | {f"{s}/".encode() for s in spellings}
    leaks = []
    for path in sorted(model_repo.repo.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            blob = path.read_bytes()
            leaks += [
                f"{path.relative_to(model_repo.repo)}: {n.decode()}" for n in needles if n in blob
            ]
    assert not leaks, leaks
    info = json.loads(contract.build_info_path(model_repo.repo, 1).read_text())
    assert info["run"] == model_repo.run.name  # outside the current directory: its name
