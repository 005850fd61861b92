"""config.pbtxt for every model of the pipeline, per target, and their validation.

Configs are built as Triton's own ModelConfig protobuf (tritonclient.grpc.model_config_pb2)
from the declaration in seminar/contract.py and printed with text_format, so a config can only
name fields Triton knows. validate_config() parses a written file back and checks its
tensors against the pipeline and, for exported models, against the ONNX graph itself.

Versions (docs/design.md section 5): composing models keep every built version loadable
(`version_policy: all`), so each pinned ensemble `seminar_vN` (the handle of an A/B arm)
routes to version N of each step; the contract ensemble `seminar` keeps only its newest
version and is re-pinned to the newest build.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2

from seminar import contract
from seminar.errors import ArtifactError
from seminar.events.tail import DEFAULT_MAX_TAIL_EVENTS, require_tail_cap


@dataclass(frozen=True)
class ServingConfig:
    """Serving limits written into every config (one place for the defaults)."""

    max_batch_size: int = 1024  # candidate rows per batch; = TensorRT profile max
    preferred_batch_sizes: tuple[int, ...] = (128, 256, 512)
    # A request is already a batch (~100 candidate rows) that rarely reaches a preferred size,
    # so each of the 5 steps waits out the whole delay on every request: at 500 us the five
    # waits alone are 2.5 ms; at 100 us all queueing measured 1.06 ms of the ensemble's 7.97 ms
    # mean at 100 events (reports/serving.md). 100 us still merges requests that arrive
    # together under load.
    max_queue_delay_us: int = 100
    cpu_instances: int = 1  # per step model; 2-core CI machines gain nothing from more
    # Instances of the fused graph's one step: it does all of a request's work, so one per
    # core keeps both cores of the 2-core reference machine busy under concurrent load.
    fused_instances: int = 2
    # The fused step waits for nothing: a request finds an idle instance unless both are busy,
    # and then the requests queued meanwhile form the next batch anyway; a delay would only add
    # itself to every request's latency (the six steps' 100 us each were measured above).
    fused_queue_delay_us: int = 0
    execution_env: str | None = None  # EXECUTION_ENV_PATH for the Python models, if set
    # Longest query (UTF-8 bytes) `features` tokenizes; longer ones get INVALID_ARG untouched.
    # Above the gateway's own limit (256) so that only direct clients ever meet it.
    max_query_bytes: int = 1024
    # Newest online events per user pq_retrieval scores beside the stored sequence (0 = none);
    # the older ones wait for compaction into the next version's store (seminar.events.tail).
    max_tail_events: int = DEFAULT_MAX_TAIL_EVENTS
    # What the ensemble schedules (contract.Graph): the six steps, or on the cpu target one
    # fused Python step that runs them in one process. None: the target's default
    # (contract.DEFAULT_GRAPH), which BuildRequest fills in.
    graph: contract.Graph | None = None

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(
                f"ServingConfig.max_batch_size must be >= 1, got {self.max_batch_size}"
            )
        if any(not 1 <= b <= self.max_batch_size for b in self.preferred_batch_sizes):
            raise ValueError("ServingConfig.preferred_batch_sizes must lie in [1, max_batch_size]")
        if self.max_queue_delay_us < 0 or self.fused_queue_delay_us < 0:
            raise ValueError(
                "ServingConfig.max_queue_delay_us and fused_queue_delay_us must be >= 0"
            )
        if self.cpu_instances < 1 or self.fused_instances < 1:
            raise ValueError("ServingConfig.cpu_instances and fused_instances must be >= 1")
        if self.max_query_bytes < 1:
            raise ValueError(
                f"ServingConfig.max_query_bytes must be >= 1, got {self.max_query_bytes}"
            )
        require_tail_cap(self.max_tail_events)


def _tensors(message_list, specs: tuple[contract.TensorSpec, ...]) -> None:
    for t in specs:
        entry = message_list.add()
        entry.name = t.name
        entry.data_type = model_config_pb2.DataType.Value(t.dtype.value)
        entry.dims.extend(t.dims)


def tensor_config(spec: contract.ModelSpec, max_batch_size: int) -> model_config_pb2.ModelConfig:
    """A ModelConfig with `spec`'s name and tensors and the batch size; the rest is the
    caller's (backend, batching, instances, parameters)."""
    config = model_config_pb2.ModelConfig(name=spec.name, max_batch_size=max_batch_size)
    _tensors(config.input, spec.inputs)
    _tensors(config.output, spec.outputs)
    return config


def _params(config: model_config_pb2.ModelConfig, params: Mapping[str, str]) -> None:
    for key in sorted(params):
        config.parameters[key].string_value = params[key]


def model_config(
    spec: contract.ModelSpec, target: contract.Target, serving: ServingConfig
) -> model_config_pb2.ModelConfig:
    """The ModelConfig of one composing model for a target."""
    config = tensor_config(spec, serving.max_batch_size)
    config.version_policy.all.SetInParent()
    config.dynamic_batching.preferred_batch_size.extend(serving.preferred_batch_sizes)
    fused = spec.name in contract.FUSED_STEP_OF.values()
    config.dynamic_batching.max_queue_delay_microseconds = (
        serving.fused_queue_delay_us if fused else serving.max_queue_delay_us
    )
    group = config.instance_group.add()
    group.count = serving.fused_instances if fused else serving.cpu_instances
    gpu = target is contract.Target.GPU
    group.kind = instance_kind(spec, target)
    if gpu and spec.kind is contract.TritonModelKind.EXPORTED:
        group.count = 1
        config.platform = "tensorrt_plan"
        config.default_model_filename = contract.PLAN_FILE
        return config
    if spec.kind is contract.TritonModelKind.NATIVE:
        config.backend = contract.NATIVE_BACKEND
        _params(config, spec.parameters)
        return config
    config.backend = "python"
    params = dict(spec.parameters)
    if spec.name in contract.QUERY_STRING_MODELS:  # the models that read the query string
        params[contract.PARAM_MAX_QUERY_BYTES] = str(serving.max_query_bytes)
    if spec.kind is contract.TritonModelKind.EXPORTED:
        params[contract.PARAM_INDEX_RANGES] = contract.INDEX_RANGES_FILE
    if spec.name in contract.TAIL_MODELS:
        params[contract.PARAM_MAX_TAIL_EVENTS] = str(serving.max_tail_events)
    if spec.name == contract.PQ_RETRIEVAL_MODEL:
        params[contract.PARAM_DEVICE] = "cuda" if gpu else "cpu"
        if gpu:
            params[contract.PARAM_FORCE_CPU_ONLY] = "no"  # torch tensors in and out via DLPack
    if serving.execution_env:
        params[contract.PARAM_EXECUTION_ENV] = serving.execution_env
    _params(config, params)
    return config


def ensemble_config(
    dims: contract.PipelineDims, name: str, pinned_version: int, serving: ServingConfig
) -> model_config_pb2.ModelConfig:
    """An ensemble whose every step is pinned to `pinned_version`."""
    config = tensor_config(contract.ensemble_spec(dims, name), serving.max_batch_size)
    config.platform = "ensemble"
    config.version_policy.latest.num_versions = 1
    if serving.graph is None:
        raise ValueError("ServingConfig.graph is unset: BuildRequest sets the target's default")
    for step in contract.ensemble_steps(serving.graph):
        s = config.ensemble_scheduling.step.add()
        s.model_name = step.model
        s.model_version = pinned_version
        s.input_map.update(step.input_map)
        s.output_map.update(step.output_map)
    return config


def to_text(config: model_config_pb2.ModelConfig) -> str:
    return text_format.MessageToString(config)


def write_config(path: Path, config: model_config_pb2.ModelConfig) -> Path:
    """Write a config.pbtxt so that a reader (Triton, a crash) sees the old or the new file,
    never half of one: a temp file in the same folder, flushed, then renamed over it."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(to_text(config))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    """Parse a config.pbtxt with Triton's model-config protobuf; ArtifactError names the file."""
    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise ArtifactError(f"{path}: not a valid Triton model config: {exc}") from exc


def model_parameters(repo: Path, model: str) -> dict[str, str]:
    """The `parameters` of model `model`'s config.pbtxt in `repo`, as strings."""
    config = parse_config(Path(repo) / model / contract.CONFIG_FILE)
    return {key: value.string_value for key, value in config.parameters.items()}


def _check_tensors(where: str, kind: str, got, want: tuple[contract.TensorSpec, ...]) -> None:
    got_list = [(t.name, model_config_pb2.DataType.Name(t.data_type), tuple(t.dims)) for t in got]
    want_list = [(t.name, t.dtype.value, t.dims) for t in want]
    if got_list != want_list:
        raise ArtifactError(f"{where}: {kind} {got_list} != pipeline {want_list}")


def onnx_tensors(onnx_path: Path) -> tuple[list[tuple], list[tuple]]:
    """(name, TYPE_*, per-row dims) of a graph's inputs and outputs; checks the batch dim is
    symbolic (dynamic)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    type_names = {t.onnx: t.value for t in contract.DataType}

    def rows(values) -> list[tuple]:
        out = []
        for v in values:
            shape = v.type.tensor_type.shape.dim
            if not shape or not shape[0].dim_param:
                raise ArtifactError(f"{onnx_path}: tensor {v.name} has no dynamic batch dim")
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in shape[1:])
            out.append((v.name, type_names.get(v.type.tensor_type.elem_type, "?"), dims))
        return out

    return rows(graph.input), rows(graph.output)


def validate_config(
    path: Path,
    spec: contract.ModelSpec,
    target: contract.Target,
    onnx_path: Path | None = None,
    serving: ServingConfig | None = None,
) -> model_config_pb2.ModelConfig:
    """Parse `path` and check it against the pipeline spec and (exported models) the graph."""
    config = parse_config(path)
    where = str(path)
    if config.name != spec.name:
        raise ArtifactError(f"{where}: name {config.name!r} != {spec.name!r}")
    if config.max_batch_size < 1:
        raise ArtifactError(f"{where}: max_batch_size must be > 0 (batch = candidate rows)")
    if serving is not None and config.max_batch_size != serving.max_batch_size:
        raise ArtifactError(
            f"{where}: max_batch_size {config.max_batch_size} != {serving.max_batch_size}"
        )
    _check_tensors(where, "inputs", config.input, spec.inputs)
    _check_tensors(where, "outputs", config.output, spec.outputs)
    if spec.kind is contract.TritonModelKind.ENSEMBLE:
        if config.platform != "ensemble":
            raise ArtifactError(f"{where}: platform {config.platform!r} != 'ensemble'")
        steps = [s.model_name for s in config.ensemble_scheduling.step]
        graphs = {
            graph: [step.model for step in contract.ensemble_steps(graph)]
            for graph in contract.Graph
        }
        if steps not in graphs.values():
            raise ArtifactError(
                f"{where}: ensemble steps {steps} are none of the graphs "
                + ", ".join(f"{graph.value} {models}" for graph, models in graphs.items())
            )
        return config
    gpu = target is contract.Target.GPU
    if spec.kind is contract.TritonModelKind.EXPORTED and gpu:
        if config.platform != "tensorrt_plan":
            raise ArtifactError(f"{where}: gpu target needs platform tensorrt_plan")
    elif spec.kind is contract.TritonModelKind.NATIVE:
        if gpu:
            raise ArtifactError(f"{where}: {spec.name} is the cpu target's (a C++ step on the CPU)")
        if config.backend != contract.NATIVE_BACKEND:
            raise ArtifactError(f"{where}: needs backend {contract.NATIVE_BACKEND}")
    elif config.backend != "python":
        raise ArtifactError(f"{where}: {target.value} target needs backend python")
    _check_queue_policy(where, config)
    if config.backend == "python":
        _check_parameters(where, config, spec, serving)
    kinds = {g.kind for g in config.instance_group}
    want_kind = instance_kind(spec, target)
    if kinds != {want_kind}:
        raise ArtifactError(
            f"{where}: instance kind must be {model_config_pb2.ModelInstanceGroup.Kind.Name(want_kind)}"
        )
    if onnx_path is not None:
        inputs, outputs = onnx_tensors(onnx_path)
        for kind, graph_rows, cfg in (
            ("inputs", inputs, config.input),
            ("outputs", outputs, config.output),
        ):
            cfg_rows = [
                (t.name, model_config_pb2.DataType.Name(t.data_type), tuple(t.dims)) for t in cfg
            ]
            if graph_rows != cfg_rows:
                raise ArtifactError(
                    f"{where}: {kind} {cfg_rows} != ONNX graph {onnx_path.name} {graph_rows}"
                )
    return config


def _check_queue_policy(where: str, config: model_config_pb2.ModelConfig) -> None:
    """No composing model may reject a request from its queue.

    A step that ends a request early (a queue timeout, like a cancellation) while a sibling
    step of the same ensemble request is still running crashes tritonserver 2.51 (SIGSEGV in
    TRITONBACKEND_ResponseSend when the sibling answers): measured 3 crashes in 3 minutes with
    per-request timeouts expiring under load. Without a queue policy Triton also ignores the
    `timeout` a client sends; abandoned work is bounded by the callers' in-flight limits.
    """
    if not config.HasField("dynamic_batching"):
        raise ArtifactError(f"{where}: composing models need dynamic_batching")
    if config.dynamic_batching.HasField("default_queue_policy") or (
        config.dynamic_batching.priority_queue_policy
    ):
        raise ArtifactError(
            f"{where}: a queue policy lets Triton end ensemble requests early, which crashes "
            "tritonserver 2.51; remove default_queue_policy / priority_queue_policy"
        )


def _check_parameters(
    where: str,
    config: model_config_pb2.ModelConfig,
    spec: contract.ModelSpec,
    serving: ServingConfig | None,
) -> None:
    """The parameters the Python models read beyond the spec's static ones."""
    params = {key: value.string_value for key, value in config.parameters.items()}
    if spec.name in contract.QUERY_STRING_MODELS:
        value = params.get(contract.PARAM_MAX_QUERY_BYTES, "")
        if not value.isdigit() or int(value) < 1:
            raise ArtifactError(
                f"{where}: parameter {contract.PARAM_MAX_QUERY_BYTES} must be an int >= 1"
            )
        if serving is not None and int(value) != serving.max_query_bytes:
            raise ArtifactError(
                f"{where}: parameter {contract.PARAM_MAX_QUERY_BYTES} {value} != {serving.max_query_bytes}"
            )
    tail_cap = params.get(contract.PARAM_MAX_TAIL_EVENTS)
    if spec.name == contract.PQ_RETRIEVAL_MODEL and tail_cap is not None and not tail_cap.isdigit():
        # absent in repositories built before online tails: pq_retrieval uses the default
        raise ArtifactError(
            f"{where}: parameter {contract.PARAM_MAX_TAIL_EVENTS} must be an int >= 0, got "
            f"{tail_cap!r}"
        )
    if (
        spec.kind is contract.TritonModelKind.EXPORTED
        and params.get(contract.PARAM_INDEX_RANGES) != contract.INDEX_RANGES_FILE
    ):
        raise ArtifactError(
            f"{where}: parameter {contract.PARAM_INDEX_RANGES} must be {contract.INDEX_RANGES_FILE!r}"
        )


def tensor_mismatch(config: model_config_pb2.ModelConfig, spec: contract.ModelSpec) -> str | None:
    """None when a written config has the spec's tensors, else what differs (one line)."""
    for kind, got, want in (
        ("inputs", config.input, spec.inputs),
        ("outputs", config.output, spec.outputs),
    ):
        got_list = [
            (t.name, model_config_pb2.DataType.Name(t.data_type), tuple(t.dims)) for t in got
        ]
        want_list = [(t.name, t.dtype.value, t.dims) for t in want]
        if got_list != want_list:
            diff = [(g, w) for g, w in zip(got_list, want_list, strict=False) if g != w]
            return f"{kind} differ: existing {diff[0][0] if diff else got_list} vs this checkpoint {diff[0][1] if diff else want_list}"
    return None


def instance_kind(spec: contract.ModelSpec, target: contract.Target) -> int:
    """KIND_GPU for the engines and pq_retrieval on gpu; the models that read the query
    string (features: id maps and a tokenizer; query_text: wordpieces and MiniLM) always run
    on the CPU."""
    on_gpu = target is contract.Target.GPU and spec.name not in contract.QUERY_STRING_MODELS
    return (
        model_config_pb2.ModelInstanceGroup.KIND_GPU
        if on_gpu
        else model_config_pb2.ModelInstanceGroup.KIND_CPU
    )


def config_target(
    config: model_config_pb2.ModelConfig, spec: contract.ModelSpec
) -> contract.Target | None:
    """The target a written composing-model config was generated for (None: cannot tell)."""
    kinds = {g.kind for g in config.instance_group}
    matches = [t for t in contract.Target if kinds == {instance_kind(spec, t)}]
    return matches[0] if len(matches) == 1 else None


def config_difference(existing: Message, generated: Message) -> tuple[str, str, str] | None:
    """The first field where two configs differ, as (field path, existing value, generated
    value) with values printed as in config.pbtxt; None when the messages are equal.

    Walks the protobuf descriptors, so it covers whatever fields a config sets (maps and
    repeated fields included) without a list of them to keep up to date.
    """
    if existing == generated:
        return None
    return _first_difference(existing, generated, "")


def _first_difference(old: Message, new: Message, prefix: str) -> tuple[str, str, str] | None:
    for oneof in new.DESCRIPTOR.oneofs:
        which_old, which_new = old.WhichOneof(oneof.name), new.WhichOneof(oneof.name)
        if which_old != which_new:
            return (prefix + oneof.name, which_old or "not set", which_new or "not set")
    for fd in new.DESCRIPTOR.fields:
        path = prefix + fd.name
        old_value, new_value = getattr(old, fd.name), getattr(new, fd.name)
        if _is_map(fd):
            value_fd = fd.message_type.fields_by_name["value"]
            for key in sorted(set(old_value) | set(new_value)):
                item = f"{path}[{key!r}]"
                if key not in old_value or key not in new_value:
                    return (
                        item,
                        _show(value_fd, old_value[key]) if key in old_value else "not set",
                        _show(value_fd, new_value[key]) if key in new_value else "not set",
                    )
                found = _value_difference(value_fd, old_value[key], new_value[key], item)
                if found:
                    return found
        elif fd.is_repeated:
            if fd.message_type is None:
                if list(old_value) != list(new_value):
                    return (path, _show_list(fd, old_value), _show_list(fd, new_value))
                continue
            for index in range(max(len(old_value), len(new_value))):
                item = f"{path}[{index}]"
                if index >= len(old_value) or index >= len(new_value):
                    return (
                        item,
                        _show(fd, old_value[index]) if index < len(old_value) else "not set",
                        _show(fd, new_value[index]) if index < len(new_value) else "not set",
                    )
                found = _first_difference(old_value[index], new_value[index], item + ".")
                if found:
                    return found
        else:
            found = _value_difference(fd, old_value, new_value, path)
            if found:
                return found
    return None


def _value_difference(
    fd: FieldDescriptor, old_value: object, new_value: object, path: str
) -> tuple[str, str, str] | None:
    if fd.message_type is not None:
        return _first_difference(old_value, new_value, path + ".")
    if old_value != new_value:
        return (path, _show(fd, old_value), _show(fd, new_value))
    return None


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def _show(fd: FieldDescriptor, value: object) -> str:
    if fd.message_type is not None:
        return "{ " + text_format.MessageToString(value, as_one_line=True) + " }"
    if fd.enum_type is not None:
        return fd.enum_type.values_by_number[value].name
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _show_list(fd: FieldDescriptor, values: Iterable[object]) -> str:
    return "[" + ", ".join(_show(fd, v) for v in values) + "]"


def pinned_version(config: model_config_pb2.ModelConfig) -> int | None:
    """The composing version every step of an ensemble config is pinned to (None if the
    steps disagree or are not pinned)."""
    versions = {s.model_version for s in config.ensemble_scheduling.step}
    return versions.pop() if len(versions) == 1 and -1 not in versions else None


def renamed_ensemble(
    pinned: model_config_pb2.ModelConfig, name: str
) -> model_config_pb2.ModelConfig:
    """A copy of a pinned ensemble's config (seminar_vN's) named `name`: it schedules what
    version N was built with (its graph: steps or fused), pinned to N."""
    out = model_config_pb2.ModelConfig()
    out.CopyFrom(pinned)
    out.name = name
    return out
