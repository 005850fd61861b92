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
    major = int(str(getattr(trt, "__version__", "0")).split(".")[0] or 0)
    if major < MIN_TENSORRT_MAJOR:
        return (
            f"--target gpu needs TensorRT >= {MIN_TENSORRT_MAJOR} (INT64 engine inputs for the "
            f"id and token tensors), found {trt.__version__}."
        )
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
    onnx_path: Path, plan_path: Path, spec: contract.ModelSpec, profile: Profile
) -> list[str]:
    """The trtexec command line equivalent to build_engine()."""

    def shapes(batch: int, which: int) -> str:
        return ",".join(f"{t.name}:{_shape(t, batch, which)}" for t in spec.inputs)

    cmd = [
        "trtexec",
        f"--onnx={onnx_path.name}",
        f"--saveEngine={plan_path.name}",
        "--fp16",
        f"--minShapes={shapes(profile.min_batch, 0)}",
        f"--optShapes={shapes(profile.opt_batch, 1)}",
        f"--maxShapes={shapes(profile.max_batch, 2)}",
    ]
    layers = fp32_layer_names(onnx_path)
    if layers:
        cmd += [
            "--precisionConstraints=obey",
            "--layerPrecisions=" + ",".join(f"{n}:fp32" for n in layers),
            "--layerOutputTypes=" + ",".join(f"{n}:fp32" for n in layers),
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
    """Build a serialized FP16 engine with the TensorRT Python API (needs a GPU)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name} ({spec.name}): {errors}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
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


def engine_parity(
    onnx_path: Path, plan_path: Path, spec: contract.ModelSpec, batch: int = 7, atol: float = 1e-2
) -> float:
    """Engine vs ONNX Runtime via polygraphy's Comparator; returns the max abs diff and
    raises RuntimeError when any output is outside atol (FP16 tolerance)."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.common import TensorMetadata
    from polygraphy.comparator import Comparator, CompareFunc, DataLoader

    shapes = {t.name: (batch, *row_dims(t, 1)) for t in spec.inputs}
    meta = TensorMetadata()
    for t in spec.inputs:
        meta.add(t.name, t.dtype.numpy, shapes[t.name])
    loader = DataLoader(
        input_metadata=meta, iterations=2, val_range={t.name: (0, 1) for t in spec.inputs}
    )
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
