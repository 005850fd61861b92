"""TensorRT engines for the `gpu` target: FP16 with FP32 LayerNorm/softmax, one profile each.

Two ways to the same engine, both produced by every gpu build:
- the `tensorrt` Python API, used when it is importable with its builder and a CUDA GPU;
- `trtexec.sh` next to each engine: the equivalent command line, so the engines can be
  (re)built inside NVIDIA's TensorRT container from the exported `model.onnx`.

Where TensorRT is absent, `unavailable_reason()` gives the one line the build prints before
it writes anything.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from seminar import contract
from seminar.errors import UsageError

# ONNX ops whose FP16 versions lose accuracy (variance / exp over a long row): kept FP32.
# Where too: masked_fill(-1e9) overflows FP16 to -inf, and an all-masked row (a cold-start
# user) would then softmax to NaN instead of zeros.
FP32_OPS = (
    "LayerNormalization",
    "Softmax",
    "Where",
    "ReduceMean",
    "Pow",
    "Sqrt",
    "Exp",
    "Reciprocal",
)


# The graphs take INT64 ids and tokens (pipeline.py); TensorRT engines accept INT64 I/O from 10.
MIN_TENSORRT_MAJOR = 10
# The newest major this code was checked against: 11 removed the weak-typing API.
MAX_TENSORRT_MAJOR = 11
# From 10.12 the FP16 builder flag, precision constraints and per-layer precision are
# deprecated (removed in 11): networks are strongly typed, precision comes from the graph.
STRONGLY_TYPED_FROM = (10, 12)
# The TensorRT of the pinned NGC 24.10 images (docker/triton/Dockerfile): what trtexec.sh targets.
CONTAINER_TENSORRT = "10.5.0"


@dataclass(frozen=True)
class BuildPlan:
    """How one TensorRT version is asked for an engine.

    Weakly typed (10.0 - 10.11): FP16 builder flag, precision constraints obeyed, FP32 forced on
    the layers of FP32_OPS. Strongly typed (10.12 and 11): every tensor keeps the type the ONNX
    graph gives it, no precision flags at all; the exported graphs are FP32, so these engines
    run in FP32 (correct everywhere, FP16 speed needs an FP16-typed export).
    """

    version: str
    strongly_typed: bool

    @property
    def fp16_flag(self) -> bool:
        return not self.strongly_typed

    @property
    def per_layer_fp32(self) -> bool:
        return not self.strongly_typed

    def trtexec_flags(self, fp32_layers: list[str]) -> list[str]:
        """trtexec's precision flags for this plan and the layers to keep in FP32."""
        if self.strongly_typed:
            return ["--stronglyTyped"]
        flags = ["--fp16"]
        if fp32_layers:
            flags += [
                "--precisionConstraints=obey",
                "--layerPrecisions=" + ",".join(f"{n}:fp32" for n in fp32_layers),
                "--layerOutputTypes=" + ",".join(f"{n}:fp32" for n in fp32_layers),
            ]
        return flags


def build_plan(version: str) -> BuildPlan:
    """The BuildPlan of a TensorRT version string ("10.5.0", "10.13.2.6", "11.0"); a version
    this code cannot drive (below 10, above 11, unparsable) is a UsageError naming it."""
    parts = str(version).split(".")
    try:
        major, minor = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise UsageError(
            f"cannot read TensorRT version {version!r} (want MAJOR.MINOR...)"
        ) from None
    if major < MIN_TENSORRT_MAJOR:
        raise UsageError(
            f"--target gpu needs TensorRT >= {MIN_TENSORRT_MAJOR} (INT64 engine inputs for the id "
            f"and token tensors), found {version}"
        )
    if major > MAX_TENSORRT_MAJOR:
        raise UsageError(
            f"TensorRT {version} is newer than this build code knows (checked up to "
            f"{MAX_TENSORRT_MAJOR}.x): build with the pinned container's TensorRT {CONTAINER_TENSORRT}"
        )
    return BuildPlan(str(version), strongly_typed=(major, minor) >= STRONGLY_TYPED_FROM)


@dataclass(frozen=True)
class Profile:
    """One optimisation profile over the batch dim (min / opt / max rows)."""

    min_batch: int = 1
    opt_batch: int = 128
    max_batch: int = 1024

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                "Profile needs 1 <= min_batch <= opt_batch <= max_batch, got "
                f"{self.min_batch}/{self.opt_batch}/{self.max_batch}"
            )


def unavailable_reason() -> str | None:
    """None when engines can be built here, else one sentence naming what is missing."""
    try:
        import tensorrt as trt
    except Exception:
        return (
            "--target gpu needs TensorRT: the `tensorrt` Python package (with its builder) is "
            "not importable here; build inside NVIDIA's TensorRT container or use --target cpu."
        )
    if not hasattr(trt, "Builder"):
        return (
            "--target gpu needs the TensorRT builder: only the lean runtime of `tensorrt` is "
            "installed here; build inside NVIDIA's TensorRT container or use --target cpu."
        )
    try:
        build_plan(getattr(trt, "__version__", "0"))
    except UsageError as error:
        return f"{error}."
    import torch

    if not torch.cuda.is_available():
        return "--target gpu needs a CUDA GPU to build TensorRT engines: none is visible here."
    return None


def fp32_layer_names(onnx_path: Path) -> list[str]:
    """ONNX node names (= TensorRT layer names after parsing) to keep in FP32."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in FP32_OPS and n.name]


# A dynamic non-batch dim (-1: the MiniLM graph's wordpieces) gets this min / opt / max:
# one wordpiece, a typical query, MiniLM's truncation length.
SEQUENCE_PROFILE = (1, 16, contract.QUERY_TEXT_MAX_TOKENS)


def row_dims(spec: contract.TensorSpec, which: int) -> tuple[int, ...]:
    """Per-row dims of `spec` at profile point `which` (0 min, 1 opt, 2 max)."""
    return tuple(SEQUENCE_PROFILE[which] if d == -1 else d for d in spec.dims)


def _shape(spec: contract.TensorSpec, batch: int, which: int) -> str:
    return "x".join(str(d) for d in (batch, *row_dims(spec, which)))


def trtexec_command(
    onnx_path: Path,
    plan_path: Path,
    spec: contract.ModelSpec,
    profile: Profile,
    plan: BuildPlan | None = None,
) -> list[str]:
    """The trtexec command line equivalent to build_engine() (default plan: the TensorRT of
    the pinned container, which trtexec.sh runs in)."""
    plan = build_plan(CONTAINER_TENSORRT) if plan is None else plan

    def shapes(batch: int, which: int) -> str:
        return ",".join(f"{t.name}:{_shape(t, batch, which)}" for t in spec.inputs)

    cmd = [
        "trtexec",
        f"--onnx={onnx_path.name}",
        f"--saveEngine={plan_path.name}",
        *plan.trtexec_flags([] if plan.strongly_typed else fp32_layer_names(onnx_path)),
        f"--minShapes={shapes(profile.min_batch, 0)}",
        f"--optShapes={shapes(profile.opt_batch, 1)}",
        f"--maxShapes={shapes(profile.max_batch, 2)}",
    ]
    return cmd


def write_trtexec_script(
    onnx_path: Path, plan_path: Path, spec: contract.ModelSpec, profile: Profile
) -> Path:
    """Write trtexec.sh next to the engine (run it from that directory)."""
    script = plan_path.parent / contract.TRTEXEC_FILE
    cmd = " \\\n  ".join(
        shlex.quote(a) for a in trtexec_command(onnx_path, plan_path, spec, profile)
    )
    script.write_text(
        "#!/bin/sh\n"
        f"# Rebuilds {plan_path.name} for Triton model {spec.name} inside NVIDIA's TensorRT\n"
        '# container. Run from this directory.\nset -e\ncd "$(dirname "$0")"\n'
        f"{cmd}\n"
    )
    script.chmod(0o755)
    return script


def build_engine(
    onnx_path: Path, plan_path: Path, spec: contract.ModelSpec, profile: Profile
) -> Path:
    """Build a serialized engine with the TensorRT Python API (needs a GPU): FP16 with FP32
    islands, or strongly typed on a TensorRT that has deprecated that (`build_plan`)."""
    import tensorrt as trt

    plan = build_plan(trt.__version__)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name} ({spec.name}): {errors}")
    config = builder.create_builder_config()
    if plan.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    if plan.per_layer_fp32:
        keep = set(fp32_layer_names(onnx_path))
        fp32_types = {trt.LayerType.SOFTMAX, trt.LayerType.NORMALIZATION}
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.name in keep or layer.type in fp32_types:
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
    opt = builder.create_optimization_profile()
    for t in spec.inputs:
        opt.set_shape(
            t.name,
            (profile.min_batch, *row_dims(t, 0)),
            (profile.opt_batch, *row_dims(t, 1)),
            (profile.max_batch, *row_dims(t, 2)),
        )
    config.add_optimization_profile(opt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build the engine of {spec.name}")
    plan_path.write_bytes(bytes(serialized))
    return plan_path


def parity_feeds(
    spec: contract.ModelSpec, batch: int = 7, iterations: int = 2, seed: int = 0
) -> list[dict]:
    """Inputs for the engine-vs-ONNX comparison: values in [0, 1) (ids and tokens 0 / 1), and
    every `topk_mask` input's first row all zero: a cold-start user, the row whose masked
    softmax the FP32 `Where` keeps finite."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(iterations):
        feed = {}
        for t in spec.inputs:
            shape = (batch, *row_dims(t, 1))
            dtype = t.dtype.numpy
            if np.issubdtype(dtype, np.floating):
                value = rng.random(shape).astype(dtype)
            else:
                value = rng.integers(0, 2, shape).astype(dtype)
            if t.name == contract.TOPK_MASK:
                value = (value > 0.5).astype(dtype)
                value[0] = 0
            feed[t.name] = value
        feeds.append(feed)
    return feeds


def engine_parity(
    onnx_path: Path, plan_path: Path, spec: contract.ModelSpec, batch: int = 7, atol: float = 1e-2
) -> float:
    """Engine vs ONNX Runtime via polygraphy's Comparator; returns the max abs diff and
    raises RuntimeError when any output is outside atol (FP16 tolerance)."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.comparator import Comparator, CompareFunc

    loader = parity_feeds(spec, batch)
    runners = [
        OnnxrtRunner(SessionFromOnnx(str(onnx_path))),
        TrtRunner(EngineFromBytes(BytesFromPath(str(plan_path)))),
    ]
    results = Comparator.run(runners, data_loader=loader)
    ok = Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=atol, rtol=atol))
    worst = 0.0
    (_, onnx_iters), (_, trt_iters) = list(results)
    for a, b in zip(onnx_iters, trt_iters, strict=True):
        for name in a:
            worst = max(worst, float(abs(a[name] - b[name]).max()))
    if not bool(ok):
        raise RuntimeError(
            f"engine vs ONNX parity failed for {spec.name}: max abs diff {worst:.3e}"
        )
    return worst
