"""Export the query encoder, item encoder and ranking head to ONNX, gated by parity checks.

Each graph takes and gives exactly the per-row tensors declared in seminar/contract.py, with a
leading dynamic batch dimension (B = candidate rows). The model's own forwards use `(B,)` for the
item index and the score; the adapters below only add or drop that trailing 1, so a TensorRT
plan made from the graph matches its config.pbtxt without a `reshape`.

The gate runs inside the build: PyTorch vs ONNX Runtime on real MovieLens inputs and on random
inputs at several batch sizes (and, for the head, with 1, K-1 and K valid slots per head); any
max abs diff over the tolerance raises CheckFailed naming the model, case and error. Then
`polygraphy run --onnxrt` runs each graph as an independent check that it loads and executes.

Before any check, the exporter's debugging records are stripped from the graph (stack traces
naming the build machine's source files, FX nodes, module scopes): the gates then pass on the
very bytes that are served, and a repository reveals nothing of the machine that built it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import subprocess
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from seminar import contract
from seminar.errors import CheckFailed


@dataclass(frozen=True)
class ExportConfig:
    batch_sizes: tuple[int, ...] = (1, 7, 256)
    atol: float = 1e-4
    max_batch: int = 1024  # upper bound of the dynamic batch dim (>= serving max_batch_size)
    seed: int = 0
    opset: int = 18
    polygraphy: bool = True

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"ExportConfig.batch_sizes must be positive, got {self.batch_sizes}")
        if max(self.batch_sizes) > self.max_batch:
            raise ValueError("ExportConfig.max_batch must cover every entry of batch_sizes")
        if not self.atol > 0:
            raise ValueError(f"ExportConfig.atol must be > 0, got {self.atol}")


class QueryEncoderGraph(nn.Module):
    """query_tokens (B, T) int64, query_text_emb (B, F) float32 (the `query_text` step's
    MiniLM embedding, zeros for no query) -> query_emb (B, D)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, query_tokens: Tensor, query_text_emb: Tensor) -> Tensor:
        return self.encoder(query_tokens, query_text_emb)


class ItemEncoderGraph(nn.Module):
    """item_index (B, 1) int64 -> item_emb (B, D)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, item_index: Tensor) -> Tensor:
        return self.encoder(item_index[:, 0])  # (B, 1) -> (B,)


class RankingHeadGraph(nn.Module):
    """query_emb (B, D), item_emb (B, D), topk_emb (B, H, K, D), topk_mask (B, H, K) float
    (1 = real slot) -> score (B, 1), a logit."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(
        self, query_emb: Tensor, item_emb: Tensor, topk_emb: Tensor, topk_mask: Tensor
    ) -> Tensor:
        score = self.head(query_emb, item_emb, topk_emb, topk_mask)
        return score.reshape(-1, 1)  # (B,) -> (B, 1)


def graph_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The exported modules of a seminar.model model, keyed by Triton model name."""
    return {
        contract.QUERY_ENCODER_MODEL: QueryEncoderGraph(model.query_encoder).eval(),
        contract.ITEM_ENCODER_MODEL: ItemEncoderGraph(model.item_encoder).eval(),
        contract.RANKING_HEAD_MODEL: RankingHeadGraph(model.ranking_head).eval(),
    }


@dataclass(frozen=True)
class ParityCase:
    model: str
    case: str  # e.g. "real", "random b=7", "random b=256 valid=K-1"
    batch: int
    max_abs_diff: float


@dataclass(frozen=True)
class ExportResult:
    model: str
    onnx_path: Path
    cases: tuple[ParityCase, ...]
    polygraphy: str  # "passed" or why it was skipped

    @property
    def max_abs_diff(self) -> float:
        return max(c.max_abs_diff for c in self.cases)


@contextlib.contextmanager
def _quiet():
    """The dynamo exporter prints pages of progress and warnings; keep the build readable."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _example(spec: contract.ModelSpec, batch: int) -> tuple[Tensor, ...]:
    # Export traces with B = 2: B = 1 would let the exporter specialise the batch dim.
    out = []
    for t in spec.inputs:
        shape = (batch, *t.dims)
        out.append(
            torch.ones(shape, dtype=torch.int64)
            if t.dtype is contract.DataType.INT64
            else torch.ones(shape, dtype=torch.float32)
        )
    return tuple(out)


def export_onnx(
    module: nn.Module, spec: contract.ModelSpec, path: Path, config: ExportConfig
) -> Path:
    """torch.onnx.export(dynamo=True) with a dynamic batch dim and the spec's tensor names."""
    batch = torch.export.Dim("batch", min=1, max=config.max_batch)
    dynamic = {t.name: {0: batch} for t in spec.inputs}
    return checked_onnx_export(module, _example(spec, 2), spec, path, dynamic, config.opset)


def checked_onnx_export(
    module: nn.Module,
    example: tuple[Tensor, ...],
    spec: contract.ModelSpec,
    path: Path,
    dynamic: Mapping[str, Mapping[int, object]],
    opset: int,
) -> Path:
    """torch.onnx.export(dynamo=True) of `module` with the spec's tensor names and the given
    dynamic dims, debug records stripped, then the ONNX checker with full shape inference."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(
                module,
                example,
                str(path),
                dynamo=True,
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                dynamic_shapes=dict(dynamic),
                opset_version=opset,
                external_data=False,
            )
    except Exception as exc:  # the exporter raises many types; report them as one
        raise CheckFailed(f"ONNX export of {spec.name} failed: {exc}") from exc
    import onnx

    strip_debug_records(path)

    try:  # the ONNX spec itself, with full shape inference, before any runtime sees the graph
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise CheckFailed(f"ONNX graph of {spec.name} is invalid: {exc}") from exc
    return path


def strip_debug_records(path: Path) -> int:
    """Remove every doc_string and metadata_props entry of an ONNX file (model, graphs and
    subgraphs, nodes, tensors, functions), rewriting it in place; returns how many went.

    The dynamo exporter records, per node, the Python stack trace of the build machine
    (absolute file paths), the FX node and module scopes, and per graph the ExportedProgram
    signature. Nothing loads them at run time; they only describe the build."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    removed = 0

    def clear(proto) -> None:
        nonlocal removed
        if getattr(proto, "doc_string", ""):
            proto.doc_string = ""
            removed += 1
        if hasattr(proto, "metadata_props"):
            removed += len(proto.metadata_props)
            del proto.metadata_props[:]

    def clear_graph(graph) -> None:
        clear(graph)
        for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
            clear(value)
        for node in graph.node:
            clear_node(node)

    def clear_node(node) -> None:
        clear(node)
        for attribute in node.attribute:
            clear(attribute)
            if attribute.HasField("g"):
                clear_graph(attribute.g)
            for subgraph in attribute.graphs:
                clear_graph(subgraph)

    clear(model)
    clear_graph(model.graph)
    for function in model.functions:
        clear(function)
        for node in function.node:
            clear_node(node)
    onnx.save(model, str(path))
    return removed


def _onnx_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare(
    module: nn.Module, session, spec: contract.ModelSpec, inputs: Mapping[str, np.ndarray]
) -> float:
    """Max abs diff between the torch module and the ONNX Runtime session on `inputs`."""
    with torch.no_grad():
        expected = module(
            *(torch.from_numpy(np.ascontiguousarray(inputs[t.name])) for t in spec.inputs)
        )
    got = session.run([t.name for t in spec.outputs], {t.name: inputs[t.name] for t in spec.inputs})
    expected = expected if isinstance(expected, tuple | list) else (expected,)
    worst = 0.0
    for name, e, g in zip([t.name for t in spec.outputs], expected, got, strict=True):
        e = e.numpy()
        if e.shape != g.shape:
            raise CheckFailed(f"{spec.name}: output {name} shape {g.shape} != torch {e.shape}")
        if not np.isfinite(g).all():
            raise CheckFailed(f"{spec.name}: output {name} has non-finite values in ONNX Runtime")
        worst = max(worst, float(np.abs(e.astype(np.float64) - g).max(initial=0.0)))
    return worst


def random_inputs(
    spec: contract.ModelSpec,
    batch: int,
    index_bounds: Mapping[str, int],
    rng: np.random.Generator,
    valid_slots: int | None = None,
) -> dict[str, np.ndarray]:
    """Random inputs for `spec`: int64 tensors uniform in [0, index_bounds[name]) (query tokens
    right-padded like real queries), floats N(0, 1), and for topk_mask `valid_slots` leading
    real slots per head (random per head when None)."""
    out: dict[str, np.ndarray] = {}
    for t in spec.inputs:
        shape = (batch, *t.dims)
        if t.name == contract.TOPK_MASK:
            h, k = t.dims
            n = rng.integers(0, k + 1, size=(batch, h, 1)) if valid_slots is None else valid_slots
            mask = np.arange(k)[None, None, :] < n  # (B or 1, H or 1, K)
            out[t.name] = np.broadcast_to(mask, shape).astype(np.float32)  # (B, H, K)
        elif t.name == contract.QUERY_TEXT_EMB:
            # What MiniLM gives: unit rows, and the zero row of an empty query for a quarter.
            text = rng.standard_normal(shape)
            text /= np.linalg.norm(text, axis=1, keepdims=True)
            out[t.name] = np.where(rng.random((batch, 1)) < 0.25, 0.0, text).astype(np.float32)
        elif t.dtype is contract.DataType.INT64:
            values = rng.integers(0, index_bounds[t.name], size=shape, dtype=np.int64)
            if t.name == contract.QUERY_TOKENS:
                lengths = rng.integers(0, t.dims[0] + 1, size=(batch, 1))  # 0 = no query
                values = np.where(np.arange(t.dims[0])[None, :] < lengths, values, 0)
            out[t.name] = values
        else:
            out[t.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def parity_cases(
    module: nn.Module,
    onnx_path: Path,
    spec: contract.ModelSpec,
    real: Mapping[str, np.ndarray],
    index_bounds: Mapping[str, int],
    config: ExportConfig,
) -> tuple[ParityCase, ...]:
    """Run every parity case of one graph; raise CheckFailed if any is over tolerance."""
    session = _onnx_session(onnx_path)
    rng = np.random.default_rng(config.seed)
    todo: list[tuple[str, dict[str, np.ndarray]]] = [("real MovieLens", dict(real))]
    for b in config.batch_sizes:
        if contract.TOPK_MASK in {t.name for t in spec.inputs}:
            k = spec.input(contract.TOPK_MASK).dims[1]
            for label, n in (("1", 1), ("K-1", k - 1), ("K", k), ("mixed", None)):
                if n == 0:
                    continue
                todo.append(
                    (f"random b={b} valid={label}", random_inputs(spec, b, index_bounds, rng, n))
                )
        else:
            todo.append((f"random b={b}", random_inputs(spec, b, index_bounds, rng)))
    cases = []
    for name, inputs in todo:
        batch = next(iter(inputs.values())).shape[0]
        diff = compare(module, session, spec, inputs)
        cases.append(ParityCase(spec.name, name, batch, diff))
        if not diff <= config.atol:  # also catches NaN
            raise CheckFailed(
                f"ONNX parity failed for {spec.name} ({name}, batch {batch}): "
                f"max abs diff {diff:.3e} > {config.atol:.0e}"
            )
    return tuple(cases)


def polygraphy_onnxrt(onnx_path: Path, spec: contract.ModelSpec, batch: int = 7) -> str:
    """`polygraphy run --onnxrt` on the graph at a fixed batch; raise CheckFailed on failure."""
    exe = Path(sys.executable).with_name("polygraphy")
    exe_path = str(exe) if exe.exists() else shutil.which("polygraphy")
    if exe_path is None:
        raise CheckFailed(
            "polygraphy is not installed in this environment (pip install polygraphy)"
        )
    from seminar.build.tensorrt import row_dims

    # A dynamic non-batch dim (the MiniLM graph's wordpieces) at its typical length.
    shapes = [
        f"{t.name}:[{','.join(str(d) for d in (batch, *row_dims(t, 1)))}]" for t in spec.inputs
    ]
    # Index inputs must stay in range: 0..1 is valid for every table (PAD / OOV rows).
    bounds = [f"{t.name}:[0,1]" for t in spec.inputs if t.dtype is contract.DataType.INT64]
    cmd = [exe_path, "run", str(onnx_path), "--onnxrt", "--input-shapes", *shapes]
    if bounds:
        cmd += ["--val-range", *bounds]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        raise CheckFailed(f"polygraphy run --onnxrt failed on {spec.name}: {' | '.join(tail)}")
    return "passed"


def export_all(
    model: nn.Module,
    dims: contract.PipelineDims,
    out_dir: Path,
    real_inputs: Mapping[str, Mapping[str, np.ndarray]],
    index_bounds: Mapping[str, int],
    config: ExportConfig = ExportConfig(),
    progress=None,
) -> dict[str, ExportResult]:
    """Export, parity-check and polygraphy-check the three graphs into out_dir/<model>.onnx.

    real_inputs: per model name, a batch of real inputs keyed by tensor name.
    index_bounds: exclusive upper bound per int64 input (query_tokens, item_index).
    progress: optional callable(str) told about each step.
    """
    specs = contract.model_specs(dims)
    results = {}
    for name, module in graph_modules(model).items():
        spec = specs[name]
        path = out_dir / f"{name}.onnx"
        if progress:
            progress(f"export {name}")
        export_onnx(module, spec, path, config)
        if progress:
            progress(f"parity {name}")
        cases = parity_cases(module, path, spec, real_inputs[name], index_bounds, config)
        poly = "skipped (disabled)"
        if config.polygraphy:
            if progress:
                progress(f"polygraphy {name}")
            poly = polygraphy_onnxrt(path, spec)
        results[name] = ExportResult(name, path, cases, poly)
    return results
