"""One build = one new numbered version of every model in a Triton model repository.

Steps (docs/design.md sections 3, 5, 7), all under the repository lock (build/lock.py), so
concurrent builds and retires of one repository run one after the other:
  preflight   target available? version free (or --force)? same D/H/K/T, target and
              model-level settings (max_batch_size, batching, instances, parameters) as the
              versions already there? Nothing but the lock file is written before these pass.
  stage       in a temp dir beside the repository: export + parity-gate the graphs, (gpu)
              TensorRT engines + trtexec.sh, features maps, PQ artifacts, backend sources,
              manifests, every config.pbtxt (validated against the graphs), model card.
  commit      rename the staged version dirs into the repository, the pinned ensemble
              `seminar_vN` (whose build.json marks the version complete) last.
An exception anywhere before commit removes the staging dir: the repository is untouched.

Artifacts name no path of the build machine: build.json and the model card show the run and
the data relative to the current directory (or by folder name), and the ONNX graphs lose the
exporter's stack traces (build/export.py).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from seminar import contract, manifest
from seminar.build import artifacts, export, lock, minilm, repository, tensorrt
from seminar.build.image_encoder import write_image_encoder
from seminar.data.prepare import IMAGE_TOWER
from seminar.errors import ConflictError, UsageError
from seminar.pq.artifacts import read_store_watermark
from seminar.provenance import git_revision

STAGING_PID_FILE = ".pid"
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class BuildRequest:
    repo: Path
    version: int
    target: contract.Target = contract.Target.CPU
    force: bool = False
    serving: repository.ServingConfig = field(default_factory=repository.ServingConfig)
    export: export.ExportConfig = field(default_factory=export.ExportConfig)
    opt_batch: int = 128

    def __post_init__(self) -> None:
        if not isinstance(self.version, int) or self.version < 1:
            raise ValueError(f"BuildRequest.version must be a positive int, got {self.version!r}")
        if not isinstance(self.target, contract.Target):
            raise ValueError(f"BuildRequest.target must be a Target, got {self.target!r}")
        if self.serving.graph is None:  # frozen: the resolved settings replace the given ones
            resolved = dataclasses.replace(self.serving, graph=contract.DEFAULT_GRAPH[self.target])
            object.__setattr__(self, "serving", resolved)
        if self.export.max_batch < self.serving.max_batch_size:
            raise ValueError("BuildRequest.export.max_batch must be >= serving.max_batch_size")

    @property
    def profile(self) -> tensorrt.Profile:
        return tensorrt.Profile(
            1, min(self.opt_batch, self.serving.max_batch_size), self.serving.max_batch_size
        )


@dataclass(frozen=True)
class BuildInputs:
    """What a build reads: the trained model, its sizes, the prepared dataset, the run."""

    model: nn.Module
    dims: contract.PipelineDims
    data_dir: Path
    run_dir: Path | None = None
    # Writes the pq_retrieval artifacts into the given (empty) dir; seminar.pq by default.
    write_pq: Callable[[Path], None] | None = None
    pq_config: object | None = None  # seminar.pq.PQConfig; its defaults when None
    # How the run's model was rebased onto data_dir's catalog (None: data_dir is its own).
    rebase: str | None = None
    # Writes version N of the native step (contract.NATIVE_MODEL: its bundle and library) into
    # a staged repository holding version N of the composing models, for --graph native. The
    # serving stage's code (the C++ step opens on those models), which the build may not
    # import: the application that mounts both hands it over (build/cli.py, NATIVE_WRITER).
    write_native: Callable[[Path, int], object] | None = None


@dataclass(frozen=True)
class BuildSummary:
    version: int
    target: contract.Target
    repo: Path
    exports: dict[str, export.ExportResult]
    files: dict[str, int]  # model -> bytes written in its version dir
    seconds: float


Progress = Callable[[str], None]


def _version_dirs(repo: Path, version: int) -> list[Path]:
    models = [*contract.VERSION_MODELS, contract.ENSEMBLE_MODEL]
    dirs = [repo / m / str(version) for m in models]
    dirs.append(repo / contract.pinned_ensemble_name(version))
    return [d for d in dirs if d.exists()]


def existing_versions(repo: Path) -> list[int]:
    """Complete versions in the repository (those whose pinned ensemble has build.json)."""
    out = []
    for d in repo.glob(f"{contract.ENSEMBLE_MODEL}_v*") if repo.is_dir() else []:
        suffix = d.name.removeprefix(f"{contract.ENSEMBLE_MODEL}_v")
        if suffix.isdigit() and contract.build_info_path(repo, int(suffix)).is_file():
            out.append(int(suffix))
    return sorted(out)


def _other_version_dirs(repo: Path, model: str, version: int) -> list[str]:
    """Version folders of `model` other than `version` (those that share its config)."""
    folder = repo / model
    if not folder.is_dir():
        return []
    names = [d.name for d in folder.iterdir() if d.is_dir() and d.name.isdigit()]
    return sorted((n for n in names if int(n) != version), key=int)


def preflight(request: BuildRequest, dims: contract.PipelineDims) -> None:
    """Every check that can refuse the build, before anything is written (call it under the
    repository lock, so that what it checks still holds at commit)."""
    graph = request.serving.graph
    if graph in contract.FUSED_STEP_OF and request.target is contract.Target.GPU:
        raise UsageError(
            f"--graph {graph.value} is the cpu target's: on the gpu target three steps are "
            "TensorRT engines, each its own Triton model; build --target gpu with --graph steps"
        )
    if request.target is contract.Target.GPU:
        reason = tensorrt.unavailable_reason()
        if reason:
            raise UsageError(reason)
    repo = request.repo
    if repo.exists() and not repo.is_dir():
        raise ConflictError(f"{repo}: exists and is not a directory")
    present = _version_dirs(repo, request.version)
    if present and not request.force:
        complete = request.version in existing_versions(repo)
        what = "exists" if complete else "is partly present (an interrupted build?)"
        raise ConflictError(
            f"version {request.version} {what} in {repo} ({present[0].relative_to(repo)}); "
            "pass --force to replace it or choose another --version"
        )
    specs = contract.model_specs(dims)
    for name in contract.STEP_MODELS:
        path = repo / name / contract.CONFIG_FILE
        if not path.is_file():
            continue
        config = repository.parse_config(path)
        existing = repository.config_target(config, specs[name])
        if existing is not None and existing is not request.target:
            raise ConflictError(
                f"{path}: existing versions were built for --target {existing.value}, this "
                f"build is --target {request.target.value}; use another --repo"
            )
        mismatch = repository.tensor_mismatch(config, specs[name])
        if mismatch:
            raise ConflictError(
                f"{path}: the checkpoint does not match the versions already in {repo} "
                f"(D={dims.d}, H={dims.h}, K={dims.k}, T={dims.t}; {mismatch}); use another --repo"
            )
        # Triton keeps model-level settings in this one file for every version: rewriting
        # it (say max_batch_size) would change the versions already served, and ensembles
        # of theirs with a larger batch would stop loading.
        sharing = _other_version_dirs(repo, name, request.version)
        generated = repository.model_config(specs[name], request.target, request.serving)
        difference = repository.config_difference(config, generated)
        if difference and sharing:
            field_path, existing_value, new_value = difference
            raise ConflictError(
                f"{path}: {field_path} is {existing_value} there but {new_value} in this "
                f"build, and this setting is shared by every version of {name} "
                f"(versions {', '.join(sharing)}), so build with the same value or into "
                "another --repo"
            )


def display_path(path: Path) -> str:
    """How artifacts name a path of the build machine: relative to the current directory
    when inside it, else only its folder name (a repository is copied to other machines,
    where the builder's absolute paths mean nothing and would reveal its layout)."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix() or "."
    except ValueError:
        return resolved.name


def serving_record(serving: repository.ServingConfig) -> dict:
    """The serving settings of a build, as build.json records them (every field of
    ServingConfig, so settings added there are recorded too)."""
    return json.loads(json.dumps(dataclasses.asdict(serving), default=str))


def _default_write_pq(inputs: BuildInputs) -> Callable[[Path], None]:
    def write(out_dir: Path) -> None:
        from seminar.data.dataset import PreparedDataset
        from seminar.pq import PQConfig, save_pq_artifacts

        config = inputs.pq_config or PQConfig()
        save_pq_artifacts(inputs.model, PreparedDataset.load(inputs.data_dir), out_dir, config)

    return write


def _reports_metrics(run_dir: Path | None) -> list[tuple[str, str]]:
    """Metrics for the model card: the run's metrics.json, then reports/*.md titles."""
    rows = []
    if run_dir and (run_dir / "metrics.json").is_file():
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text())
        except ValueError:
            metrics = {}
        flat = metrics.get("test", metrics) if isinstance(metrics, dict) else {}
        for key, value in flat.items():
            if isinstance(value, int | float):
                rows.append((str(key), f"{value:.4f}" if isinstance(value, float) else str(value)))
    return rows


def _benchmark_sizes() -> str | None:
    """D, H, K of the models reports/quality.md trained (its "model overrides" of the defaults)."""
    from seminar.model.config import ModelConfig

    try:
        text = (REPO_ROOT / "reports" / "quality.md").read_text()
    except OSError:
        return None
    found = re.search(r"model overrides: (\{.*?\})\.", text)
    try:
        config = dataclasses.replace(ModelConfig(), **json.loads(found.group(1) if found else ""))
    except (ValueError, TypeError):
        return None
    return f"D={config.dim}, H={config.heads}, K={config.top_k}"


def _quality_report(variant: str, sizes: str) -> list[str]:
    """This model kind's row of reports/quality.json (`seminar bench quality`), if present:
    the benchmark of the recipe, over seeds, not of this particular checkpoint. `sizes` are
    this version's; the card says whether the benchmark trained the same ones, since the two
    tables sit side by side (a `--quick` run beside default-configuration figures)."""
    path = REPO_ROOT / "reports" / "quality.json"
    try:
        row = json.loads(path.read_text()).get(variant, {})
    except (OSError, ValueError, AttributeError):
        return []
    cells = [
        (metric, stat)
        for metric, stat in row.items()
        if isinstance(stat, dict) and {"mean", "std"} <= stat.keys()
    ]
    if not cells:
        return []
    benchmark = _benchmark_sizes()
    if benchmark is None:
        configuration = "at the configuration reports/quality.md states"
    elif benchmark == sizes:
        configuration = f"at this version's configuration ({sizes})"
    else:
        configuration = (
            f"at another configuration than this version's: {benchmark}, "
            f"training settings in reports/quality.md"
        )
    out = [
        "",
        f"## Benchmark of the `{variant}` recipe",
        "",
        f"`seminar bench quality`, {configuration} (reports/quality.json, mean ± std over "
        "seeds); not a measurement of this version:",
        "",
    ]
    out += ["| metric | mean ± std | n |", "|---|---|---|"]
    out += [f"| {m} | {s['mean']:.4f} ± {s['std']:.4f} | {s.get('n', '')} |" for m, s in cells]
    return out


def _event_log_line(recorded: object) -> str:
    """The model card's sentence on the online events the version's PQ store holds."""
    mark = recorded if isinstance(recorded, dict) else {}
    if not mark.get("watermark"):
        return (
            "Online events: none folded in (watermark 0); serving scores every logged event "
            "as the tail."
        )
    return (
        f"Online events: the PQ store holds event log `{mark['log_id']}` up to seq "
        f"{mark['watermark']} (`seminar data append`); serving scores the later ones as the tail."
    )


def model_card(request: BuildRequest, inputs: BuildInputs, info: dict) -> str:
    dims = inputs.dims
    sizes = f"D={dims.d}, H={dims.h}, K={dims.k}"
    metrics = _reports_metrics(inputs.run_dir)
    reports = sorted((REPO_ROOT / "reports").glob("*.md"))
    lines = [
        f"# SEMINAR model card: version {request.version} ({request.target.value})",
        "",
        f"- Built: {info['built_at']} from git revision `{info['git_revision']}`",
        f"- Run: `{display_path(inputs.run_dir) if inputs.run_dir else None}`; "
        f"data: `{display_path(inputs.data_dir)}`",
        f"- Sizes: D={dims.d}, H={dims.h} GSU heads, K={dims.k} events per head, T={dims.t} query tokens",
        f"- Serve through `{contract.ENSEMBLE_MODEL}` (newest build) or `{contract.pinned_ensemble_name(request.version)}` "
        f"version {request.version} (A/B arm handle).",
        f"- Output `{contract.OUTPUT_SCORE}` FP32 [1] per candidate row is a **logit** (not a probability): "
        "apply a sigmoid for a click probability; ranking by logit and by probability agree.",
        "- Unknown item ids map to the OOV embedding (index 1); users with no stored history are "
        "scored from the query and item alone (cold start).",
        "",
        "## Data",
        "",
        f"{info.get('data', 'prepared dataset at ' + display_path(inputs.data_dir))}",
        "",
        _event_log_line(info.get(contract.EVENT_LOG_FIELD)),
        "",
        *([f"The run's model was {inputs.rebase}.", ""] if inputs.rebase else []),
        f"## Metrics of this version's run ({sizes}, test split)",
        "",
    ]
    if metrics:
        lines += ["| metric | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in metrics]]
    else:
        lines.append("No metrics.json in the run.")
    kind = getattr(getattr(inputs.model, "config", None), "kind", None)
    lines += _quality_report(getattr(kind, "value", "seminar"), sizes)
    if reports:
        lines += ["", "Reports: " + ", ".join(f"`reports/{p.name}`" for p in reports)]
    lines += ["", "## Export parity (PyTorch vs ONNX Runtime, max abs diff)", ""]
    lines += ["| model | cases | max abs diff | polygraphy |", "|---|---|---|---|"]
    for name, res in info["exports"].items():
        lines.append(
            f"| {name} | {res['cases']} | {res['max_abs_diff']:.2e} | {res['polygraphy']} |"
        )
    return "\n".join(lines) + "\n"


def _data_summary(data_dir: Path) -> str:
    meta = data_dir / "meta.json"
    where = display_path(data_dir)
    if not meta.is_file():
        return f"prepared dataset at `{where}`"
    try:
        m = json.loads(meta.read_text())
    except ValueError:
        return f"prepared dataset at `{where}` (meta.json unreadable)"
    synthetic = " (synthetic)" if m.get("synthetic") else ""
    stats = m.get("stats", {})
    stats_txt = ", ".join(f"{k}={v}" for k, v in stats.items() if isinstance(v, int | float))
    return f"`{m.get('name', data_dir.name)}`{synthetic} from `{where}`; {stats_txt}"


def stage(request: BuildRequest, inputs: BuildInputs, staging: Path, progress: Progress) -> dict:
    """Write the whole version into `staging` (same layout as the repository)."""
    dims, n = inputs.dims, request.version
    specs = contract.model_specs(dims)
    onnx_dir = staging / ".onnx"

    real = artifacts.real_parity_inputs(inputs.model, inputs.data_dir, dims)
    bounds = artifacts.index_bounds(inputs.data_dir)
    exports = export.export_all(
        inputs.model, dims, onnx_dir, real, bounds, request.export, progress
    )

    models = contract.GRAPH_MODELS_OF[request.serving.graph]
    version_dirs = {name: staging / name / str(n) for name in models}
    for d in version_dirs.values():
        d.mkdir(parents=True)

    exports[contract.QUERY_TEXT_MODEL] = minilm.export_query_text(
        onnx_dir, inputs.data_dir, request.export, progress
    )
    graph_specs = {name: specs[name] for name in contract.EXPORTED_MODELS}
    graph_specs[contract.QUERY_TEXT_MODEL] = contract.query_text_graph_spec()
    for name, graph_spec in graph_specs.items():
        vdir = version_dirs[name]
        shutil.copyfile(exports[name].onnx_path, vdir / contract.ONNX_FILE)
        if request.target is contract.Target.GPU:
            progress(f"tensorrt {name}")
            plan = vdir / contract.PLAN_FILE
            tensorrt.write_trtexec_script(
                vdir / contract.ONNX_FILE, plan, graph_spec, request.profile
            )
            tensorrt.build_engine(vdir / contract.ONNX_FILE, plan, graph_spec, request.profile)
            tensorrt.engine_parity(vdir / contract.ONNX_FILE, plan, graph_spec)
        if name in contract.EXPORTED_MODELS and request.target is contract.Target.CPU:
            artifacts.copy_backend(specs[name].backend_source, vdir)
            artifacts.write_index_ranges(vdir, specs[name], bounds)

    # query_text is a Python model on every target (it tokenizes strings); the gpu build's
    # plan beside its graph is for the TensorRT container route (trtexec.sh).
    query_text_dir = version_dirs[contract.QUERY_TEXT_MODEL]
    minilm.copy_tokenizer(query_text_dir)
    artifacts.copy_backend(specs[contract.QUERY_TEXT_MODEL].backend_source, query_text_dir)

    progress("features maps")
    artifacts.write_features(inputs.data_dir, version_dirs[contract.FEATURES_MODEL], dims)
    artifacts.copy_backend(
        specs[contract.FEATURES_MODEL].backend_source, version_dirs[contract.FEATURES_MODEL]
    )

    progress("pq artifacts")
    pq_dir = version_dirs[contract.PQ_RETRIEVAL_MODEL] / contract.PQ_DIR
    pq_dir.mkdir()
    (inputs.write_pq or _default_write_pq(inputs))(pq_dir)
    # The position in the online event log the store holds the events up to (the dataset's,
    # from `seminar data append`): serving scores each user's events after it as the tail.
    event_log = read_store_watermark(pq_dir)
    artifacts.copy_backend(
        specs[contract.PQ_RETRIEVAL_MODEL].backend_source, version_dirs[contract.PQ_RETRIEVAL_MODEL]
    )

    if contract.PIPELINE_MODEL in version_dirs:  # it reads the six steps' folders
        artifacts.copy_backend(
            specs[contract.PIPELINE_MODEL].backend_source, version_dirs[contract.PIPELINE_MODEL]
        )

    # New items' images are embedded by the tower the dataset's vectors came from.
    tower = inputs.data_dir / IMAGE_TOWER
    if tower.is_dir():
        progress("image encoder")
        write_image_encoder(staging, n, tower, request.serving)

    def write_model(name: str) -> None:
        manifest.write_manifest(version_dirs[name])
        path = repository.write_config(
            staging / name / contract.CONFIG_FILE,
            repository.model_config(specs[name], request.target, request.serving),
        )
        onnx_path = (
            version_dirs[name] / contract.ONNX_FILE if name in contract.EXPORTED_MODELS else None
        )
        repository.validate_config(path, specs[name], request.target, onnx_path, request.serving)

    progress("configs and manifests")
    for name in models:
        if name != contract.NATIVE_MODEL:  # the native step opens on the others: written last
            write_model(name)
    if contract.NATIVE_MODEL in models:
        if inputs.write_native is None:
            raise UsageError("--graph native: this build was given no native step writer")
        progress("native step")
        inputs.write_native(staging, n)
        write_model(contract.NATIVE_MODEL)

    newest = max([n, *existing_versions(request.repo)])
    for name, pin in ((contract.pinned_ensemble_name(n), n), (contract.ENSEMBLE_MODEL, newest)):
        (staging / name / str(n)).mkdir(parents=True)
        if pin == n:
            config = repository.ensemble_config(dims, name, pin, request.serving)
        else:  # `seminar` stays on the newest version, with the graph that version has
            pinned = request.repo / contract.pinned_ensemble_name(pin) / contract.CONFIG_FILE
            config = repository.renamed_ensemble(repository.parse_config(pinned), name)
        path = repository.write_config(staging / name / contract.CONFIG_FILE, config)
        repository.validate_config(path, contract.ensemble_spec(dims, name), request.target)

    info = {
        "version": n,
        "target": request.target.value,
        "dims": {"d": dims.d, "h": dims.h, "k": dims.k, "t": dims.t},
        "built_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_revision": git_revision(),
        "run": display_path(inputs.run_dir) if inputs.run_dir else None,
        "data": _data_summary(inputs.data_dir),
        "rebase": inputs.rebase,
        contract.EVENT_LOG_FIELD: event_log.to_json(),
        "serving": serving_record(request.serving),
        "exports": {
            name: {
                "cases": len(res.cases),
                "max_abs_diff": res.max_abs_diff,
                "polygraphy": res.polygraphy,
            }
            for name, res in exports.items()
        },
    }
    build_info = contract.build_info_path(staging, n)
    (build_info.parent / contract.MODEL_CARD_FILE).write_text(model_card(request, inputs, info))
    # build.json is written last: its presence after commit marks the version complete.
    build_info.write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(onnx_dir)
    return {"exports": exports, "info": info}


def commit(request: BuildRequest, staging: Path) -> None:
    """Move the staged version into the repository (renames on one filesystem).

    If a rename fails half-way, the ones already done are undone, so the repository holds
    either the whole version or none of it. (A crash of the process itself between renames
    leaves a version without seminar_vN/N/build.json: preflight reports it as partial.)
    """
    repo, n = request.repo, request.version
    trash = staging / ".replaced"
    trash.mkdir()
    done: list[tuple[Path, Path, Path | None]] = []  # (src, dst, where the old dst went)

    def move(src: Path, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if dst.exists():  # --force: keep the old one aside until the commit succeeds
            old = trash / f"{len(done)}-{dst.parent.name}-{dst.name}"
            os.rename(dst, old)
        done.append((src, dst, old))
        os.rename(src, dst)

    try:
        repo.mkdir(parents=True, exist_ok=True)
        staged = [name for name in contract.VERSION_MODELS if (staging / name / str(n)).is_dir()]
        for name in [*staged, contract.ENSEMBLE_MODEL]:
            move(staging / name / str(n), repo / name / str(n))
            for model_file in (contract.CONFIG_FILE, *contract.MODEL_FILES.get(name, ())):
                move(staging / name / model_file, repo / name / model_file)
        # The pinned ensemble (with build.json) goes last: until it lands the version is
        # incomplete.
        move(staging / contract.pinned_ensemble_name(n), repo / contract.pinned_ensemble_name(n))
    except BaseException:
        for src, dst, old in reversed(done):
            if dst.exists():
                os.rename(dst, src)
            if old is not None:
                os.rename(old, dst)
        for _, dst, _ in done:  # model dirs this build created: gone again
            if dst.parent.is_dir() and not any(dst.parent.iterdir()):
                dst.parent.rmdir()
        raise


def remove_stale_staging(parent: Path, repo_name: str) -> None:
    """Staging dirs of builds (and trash dirs of retires) whose process is gone (killed, not
    interrupted) are garbage; those of a live process (another terminal) are left alone."""
    for staging in parent.glob(f".{repo_name}.v*.*"):
        try:
            pid = int((staging / STAGING_PID_FILE).read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(staging, ignore_errors=True)
        except (OSError, ValueError):
            continue  # unreadable pid file or not ours to signal: leave it


def build_version(
    request: BuildRequest,
    inputs: BuildInputs,
    progress: Progress = lambda _msg: None,
    on_lock_wait: Progress | None = None,
) -> BuildSummary:
    """Preflight, stage in a temp dir beside the repository, commit. Atomic per version.

    All of it runs under the repository lock; while another build or retire holds it,
    `on_lock_wait` (default: `progress`) is told once who holds it, and the build waits.
    """
    started = time.perf_counter()
    with lock.RepositoryLock(request.repo, "build", request.version, on_lock_wait or progress):
        preflight(request, inputs.dims)
        parent = request.repo.resolve().parent
        remove_stale_staging(parent, request.repo.name)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{request.repo.name}.v{request.version}.", dir=parent)
        )
        (staging / STAGING_PID_FILE).write_text(str(os.getpid()))
        try:
            staged = stage(request, inputs, staging, progress)
            progress("commit")
            commit(request, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    written = [request.repo / name / str(request.version) for name in contract.VERSION_MODELS]
    files = {
        folder.parent.name: sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        for folder in written
        if folder.is_dir()
    }
    return BuildSummary(
        request.version,
        request.target,
        request.repo,
        staged["exports"],
        files,
        time.perf_counter() - started,
    )
