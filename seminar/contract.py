"""The contract: every name and index convention, and the serving pipeline, declared once.

Change a name here and every producer and consumer changes with it: the client-facing names
(`seminar`, `user_id`, `query`, `item_id`, `score`, `seminar.v1.Ranker`) are fixed by
docs/serving.md; the internal tensor names, config parameters and artifact files are ours.
build/ generates every config.pbtxt from the pipeline below, the Triton backends
(serving/backends/) read their tensor names and `parameters` keys from it, and tests check the
exported graphs and the generated configs against it.

Shapes: the batch dimension is the candidate row everywhere (max_batch_size > 0), so every
`dims` below is per row and excludes it. Letters: D hidden size, H GSU heads, K events kept per
head, T query tokens, F the frozen text embedding's width (QUERY_TEXT_DIM).

    features       user_id INT64[1], query BYTES[1], item_id INT64[1]
                   -> user_index INT64[1], query_tokens INT64[T], item_index INT64[1],
                      query_checked BYTES[1]
    query_text     query (<- query_checked) BYTES[1] -> query_text_emb FP32[F]
                   (frozen MiniLM; "" -> zeros)
    query_encoder  query_tokens, query_text_emb -> query_emb FP32[D]
    item_encoder   item_index -> item_emb FP32[D]
    pq_retrieval   user_index, query_emb, item_emb, user_id (the ensemble's input)
                   -> topk_emb FP32[H,K,D], topk_mask FP32[H,K]
                   (the stored sequence plus the user's online tail from the event log)
    ranking_head   query_emb, item_emb, topk_emb, topk_mask -> score FP32[1]  (a logit)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum, unique
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar, Final

if TYPE_CHECKING:
    import numpy as np

    from seminar.model.config import ModelConfig

# Triton ensemble (docs/serving.md: "Triton ensemble (contract)").
ENSEMBLE_MODEL: Final = "seminar"
INPUT_USER_ID: Final = "user_id"  # INT64 [1] per candidate row
INPUT_QUERY: Final = "query"  # BYTES [1] per row, UTF-8, empty = recommendation request
INPUT_ITEM_ID: Final = "item_id"  # INT64 [1] per row
OUTPUT_SCORE: Final = "score"  # FP32 [1] per row

# Composing models of the ensemble.
QUERY_TEXT_MODEL: Final = "query_text"  # the query's frozen MiniLM embedding
QUERY_ENCODER_MODEL: Final = "query_encoder"
ITEM_ENCODER_MODEL: Final = "item_encoder"
PQ_RETRIEVAL_MODEL: Final = "pq_retrieval"
RANKING_HEAD_MODEL: Final = "ranking_head"
# The fused graph's one step (cpu target): the six steps' work in one Python model, reading
# their artifacts from their version folders, so no tensor crosses an IPC between steps.
PIPELINE_MODEL: Final = "pipeline"
# The native graph's one step: the fused step in C++ in a Triton backend of our own
# (serving/native/), whose library sits in the model's folder.
NATIVE_MODEL: Final = "seminar_native"
NATIVE_BACKEND: Final = "seminar_native"
NATIVE_LIBRARY: Final = f"libtriton_{NATIVE_BACKEND}.so"  # Triton's name for the backend's library
# Where the native step forwards what it does not score itself (searches; every request when
# tritonserver reads an event log): the Python step of the same version.
PARAM_SEARCH_MODEL: Final = "search_model"

# Gateway (docs/serving.md: "Gateway (contract)").
GATEWAY_SERVICE: Final = "seminar.v1.Ranker"
GATEWAY_METHOD: Final = "Rank"
AB_BUCKETS: Final = 10_000
# The online event log's API, served by the gateway process (docs/design.md section 13).
EVENTS_SERVICE: Final = "seminar.v1.Events"
EVENTS_METHOD: Final = "Record"
# Where pq_retrieval reads users' online tails: the event log URL in tritonserver's environment
# (`seminar serve --event-log URL` sets it; unset = no tails, the version's base store only).
EVENT_LOG_ENV: Final = "SEMINAR_EVENT_LOG"
# The log position a prepared dataset (meta.json) and a version's PQ store (its manifest) were
# built at: {"log_id": ..., "watermark": W}; absent = no event of the log folded in (W = 0).
EVENT_LOG_FIELD: Final = "event_log"

# Default loopback ports for local runs (tests pick free ports instead).
DEFAULT_GRPC_PORT: Final = 8001
DEFAULT_HTTP_PORT: Final = 8000
DEFAULT_METRICS_PORT: Final = 8002
DEFAULT_GATEWAY_PORT: Final = 50051
DEFAULT_GATEWAY_METRICS_PORT: Final = 9102
DEFAULT_HEALTH_PORT: Final = 8003  # `seminar serve`'s own /live, /ready, /status, /metrics

# Header that unlocks Triton's model-repository API (load, unload, index) under `seminar serve`.
ADMIN_KEY_HEADER: Final = "seminar-admin-key"

# The Python-backend sources (serving/backends/) are files that build/ copies into each version
# folder as model.py: build finds them by package name, never imports them (they need Triton).
BACKENDS_PACKAGE = "seminar.serving.backends"


def backend_source_path(source: str) -> Path:
    """The file of a Python-backend source (e.g. "features.py"), found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec(BACKENDS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {BACKENDS_PACKAGE} is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / source


# Internal tensor names (between ensemble steps; clients never see them).
USER_INDEX = "user_index"  # INT64 [1]: dense user index of the sequence store, -1 = cold start
QUERY_TOKENS = "query_tokens"  # INT64 [T]: token ids, right-padded with 0 (<pad>), 1 = <unk>
ITEM_INDEX = "item_index"  # INT64 [1]: dense item index, 1 = OOV (unknown item id)
# FP32 [F]: the query's frozen MiniLM embedding (seminar.data.features.embed_texts); an empty
# query (a recommendation request) is the all-zero row.
QUERY_TEXT_EMB = "query_text_emb"
# BYTES [1]: the request's query, passed through by `features` once every row of the request
# passed its checks. `query_text` reads its `query` input from it instead of from the
# ensemble's input, so it runs after `features`: a request is then only ever rejected by the
# first step, while no other step works on it. An error from one step while a sibling step
# still ran on the same ensemble request left tritonserver 2.51 answering later requests with
# other requests' errors and never answering some (measured: 48 concurrent requests, a quarter
# rejected by features alone, half by both).
QUERY_CHECKED = "query_checked"
# F: the width of MiniLM's embedding (seminar.data.features.TEXT_DIM, which a test holds equal).
QUERY_TEXT_DIM = 384
# The MiniLM graph inside `query_text` (not a pipeline tensor: the model tokenizes the query
# itself): wordpiece ids and their mask, (B, S) with S the batch's longest query in tokens.
TEXT_INPUT_IDS = "input_ids"
TEXT_ATTENTION_MASK = "attention_mask"
# MiniLM's longest input in wordpieces (sentence-transformers' max_seq_length for this model):
# longer queries are truncated exactly as `seminar.data.features.embed_texts` truncates them.
QUERY_TEXT_MAX_TOKENS = 256
QUERY_EMB = "query_emb"  # FP32 [D]
ITEM_EMB = "item_emb"  # FP32 [D]
TOPK_EMB = "topk_emb"  # FP32 [H, K, D]: exact pair embeddings of each head's top-K events
TOPK_MASK = "topk_mask"  # FP32 [H, K]: 1 = real event, 0 = empty slot (short or cold history)

# Index conventions of every table (data, model, build, serving and clients share them).
COLD_START_USER_INDEX = -1  # a user with no stored history
PAD_ITEM_INDEX = 0  # padding: never a real event, never selected by the GSU
OOV_ITEM_INDEX = 1  # an item id the model has never seen
FIRST_ITEM_INDEX = 2  # item index i is external id item_ids[i - FIRST_ITEM_INDEX]
PAD_TOKEN_ID = 0  # "<pad>"
UNK_TOKEN_ID = 1  # "<unk>"

# Model-config `parameters` keys read by the backends (values are strings in config.pbtxt).
PARAM_EXECUTION_ENV = "EXECUTION_ENV_PATH"  # Python models: the venv the stub activates
PARAM_FORCE_CPU_ONLY = "FORCE_CPU_ONLY_INPUT_TENSORS"  # pq_retrieval on gpu: "no" (DLPack)
PARAM_ONNX_FILE = "onnx_file"  # cpu ONNX Runtime models: graph file in the version dir
PARAM_INTRA_OP_THREADS = "intra_op_threads"  # cpu ONNX Runtime models
PARAM_USER_IDS = "user_ids_file"  # features: int64 (U,) external user id of user index u
PARAM_ITEM_IDS = "item_ids_file"  # features: int64 (I,) external item id of item index i + 2
PARAM_TOKENS = "tokens_file"  # features: JSON list[str], token vocabulary (0 <pad>, 1 <unk>)
PARAM_QUERY_LEN = "query_len"  # features: T
PARAM_PQ_DIR = "pq_dir"  # pq_retrieval: folder (in the version dir) of save_pq_artifacts
PARAM_DEVICE = "device"  # pq_retrieval: "cpu" or "cuda"
PARAM_TOP_K = "top_k"  # pq_retrieval: K
PARAM_MAX_TAIL_EVENTS = "max_tail_events"  # pq_retrieval: newest online events scored per user
# features, query_text: longer queries are rejected untokenized
PARAM_MAX_QUERY_BYTES = "max_query_bytes"
PARAM_TEXT_TOKENIZER = "tokenizer_file"  # query_text: MiniLM's tokenizer.json in the version dir
PARAM_TEXT_MAX_TOKENS = "max_tokens"  # query_text: truncation length in wordpieces
# cpu ONNX Runtime models: JSON file in the version dir, [low, high) per index input
PARAM_INDEX_RANGES = "index_ranges_file"

CONFIG_FILE = "config.pbtxt"  # in each model's folder, beside its version folders

# Artifact file names inside a model's version directory.
ONNX_FILE = "model.onnx"
PLAN_FILE = "model.plan"
PYTHON_FILE = "model.py"
USER_IDS_FILE = "user_ids.npy"
ITEM_IDS_FILE = "item_ids.npy"
TOKENS_FILE = "tokens.json"
TEXT_TOKENIZER_FILE = "tokenizer.json"  # query_text: MiniLM's wordpiece tokenizer
PQ_DIR = "pq"
MANIFEST_FILE = "manifest.json"
TRTEXEC_FILE = "trtexec.sh"
BUILD_INFO_FILE = "build.json"  # in seminar_vN/N/: written last, marks version N complete
MODEL_CARD_FILE = "model_card.md"
INDEX_RANGES_FILE = "index_ranges.json"
# A regular empty file where the stub would write model.py's bytecode cache: Python cannot
# create the __pycache__ folder and silently skips writing bytecode into the version folder.
PYCACHE_BLOCKER = "__pycache__"

# Python-backend sources in serving/backends/, copied to
# <model>/<version>/model.py. The three exported graphs share one ONNX Runtime runner.
FEATURES_SOURCE = "features.py"
QUERY_TEXT_SOURCE = "query_text.py"
ONNX_RUNNER_SOURCE = "onnx_model.py"
PQ_RETRIEVAL_SOURCE = "pq_retrieval.py"
PIPELINE_SOURCE = "pipeline.py"
# Beside the ensemble, for items that arrive after a build: encoded image bytes -> the image
# modality's vector, through the DALI preprocessing and the dataset's image tower.
IMAGE_ENCODER_MODEL = "image_encoder"
IMAGE_ENCODER_SOURCE = "image_encoder.py"
# Images are decoded and embedded a batch at a time on the CPU: small batches keep a request's
# wait short. Clients send at most this many images per call.
IMAGE_ENCODER_MAX_BATCH = 16
INPUT_IMAGE = "image"  # BYTES[1]: one JPEG or PNG file's bytes per row
IMAGE_EMB = "image_emb"  # FP32[F]: F = the tower's output width
# BYTES[1]: which tower made the row's vector (the digest of its weights), so that a client
# adding items to a dataset can refuse vectors of another dataset's tower.
IMAGE_TOWER_ID = "image_tower_id"
PARAM_IMAGE_TOWER = "image_tower_dir"  # image_encoder: the tower's folder in the version dir
IMAGE_TOWER_DIR = "image_tower"


@unique
class Target(StrEnum):
    """Build targets."""

    CPU = "cpu"  # Python backend + ONNX Runtime, KIND_CPU
    GPU = "gpu"  # TensorRT engines, KIND_GPU


@unique
class Graph(StrEnum):
    """What the ensemble's scheduling runs. STEPS: the six composing models, each its own
    Triton model (the gpu target's TensorRT engines are three of them). FUSED (cpu target):
    one Python step, `pipeline`, that runs the same library calls in one process; the six
    models stay in the repository (`pipeline` reads their artifacts, and each still answers
    on its own), but requests no longer pay an IPC round trip and a dynamic-batching wait per
    step."""

    STEPS = "steps"
    FUSED = "fused"
    # cpu target: the fused step in C++ (`seminar_native`, no Python stub, no IPC), with the
    # fused graph's `pipeline` beside it for the searches it forwards.
    NATIVE = "native"


# `seminar build`'s graph when none is named: on the CPU every step is a Python model, so
# fusing them saves an IPC round trip and a batcher wait per step; on the GPU three steps
# are TensorRT engines, which only Triton can run.
DEFAULT_GRAPH: Mapping[Target, Graph] = MappingProxyType(
    {Target.CPU: Graph.FUSED, Target.GPU: Graph.STEPS}
)


@unique
class DataType(Enum):
    """Triton data types used by the pipeline, with their numpy and ONNX counterparts."""

    INT64 = "TYPE_INT64"
    FP32 = "TYPE_FP32"
    BYTES = "TYPE_STRING"

    @property
    def numpy(self) -> np.dtype:
        # Imported here: the contract itself is standard-library only (the tokenizer, which
        # the features model imports, reads its token ids from it).
        import numpy as np

        return {DataType.INT64: np.dtype(np.int64), DataType.FP32: np.dtype(np.float32)}.get(
            self, np.dtype(np.object_)
        )

    @property
    def triton(self) -> str:
        """The name the Triton client APIs use ("INT64", "FP32", "BYTES")."""
        return {DataType.INT64: "INT64", DataType.FP32: "FP32", DataType.BYTES: "BYTES"}[self]

    @property
    def onnx(self) -> int:
        """onnx.TensorProto element type."""
        return {DataType.INT64: 7, DataType.FP32: 1, DataType.BYTES: 8}[self]


@unique
class TritonModelKind(Enum):
    """How Triton runs a model of the pipeline (the model's architecture is
    seminar.model.config.ModelKind)."""

    EXPORTED = "exported"  # a torch module exported to ONNX (cpu) / a TensorRT engine (gpu)
    PYTHON = "python"  # a Python-backend model.py from serving/backends/
    NATIVE = "native"  # our C++ backend (serving/native/): its library in the model's folder
    ENSEMBLE = "ensemble"


@dataclass(frozen=True)
class PipelineDims:
    """The model sizes every tensor shape of the pipeline is derived from."""

    d: int  # hidden size D
    h: int  # GSU heads H
    k: int  # events kept per head K
    t: int  # query tokens T

    def __post_init__(self) -> None:
        for name in ("d", "h", "k", "t"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"PipelineDims.{name} must be a positive int, got {value!r}")

    # The field of seminar.model's ModelConfig each size is read from.
    MODEL_CONFIG_FIELDS: ClassVar[Mapping[str, str]] = MappingProxyType(
        {"d": "dim", "h": "heads", "k": "top_k", "t": "query_len"}
    )

    @classmethod
    def from_model_config(cls, config: ModelConfig) -> PipelineDims:
        """D, H, K, T of the model's config (seminar.model.config.ModelConfig, passed whole)."""
        sizes = {}
        for size, name in cls.MODEL_CONFIG_FIELDS.items():
            if not hasattr(config, name):
                raise TypeError(
                    f"PipelineDims.from_model_config: {type(config).__name__} has no field "
                    f"{name!r} (the pipeline's {size.upper()}); pass seminar.model's ModelConfig"
                )
            sizes[size] = getattr(config, name)
        return cls(**sizes)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: DataType
    dims: tuple[int, ...]  # per row, batch excluded


@dataclass(frozen=True)
class ModelSpec:
    """One Triton model of the pipeline."""

    name: str
    kind: TritonModelKind
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Python models: file in serving/backends/ copied to <version>/model.py (cpu target for the
    # exported models; None where the target serves an engine directly).
    backend_source: str | None = None
    # Static `parameters` of config.pbtxt (artifact names, knobs); the repository writer adds
    # the execution environment and per-target keys.
    parameters: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)


@dataclass(frozen=True)
class EnsembleStep:
    model: str
    input_map: Mapping[str, str]  # the model's input name -> ensemble tensor name
    output_map: Mapping[str, str]  # the model's output name -> ensemble tensor name


def _t(name: str, dtype: DataType, *dims: int) -> TensorSpec:
    return TensorSpec(name, dtype, tuple(dims))


def model_specs(dims: PipelineDims) -> dict[str, ModelSpec]:
    """Every composing model of the ensemble, in data-flow order, keyed by model name."""
    i64, f32 = DataType.INT64, DataType.FP32
    query_emb, item_emb = _t(QUERY_EMB, f32, dims.d), _t(ITEM_EMB, f32, dims.d)
    topk_emb = _t(TOPK_EMB, f32, dims.h, dims.k, dims.d)
    topk_mask = _t(TOPK_MASK, f32, dims.h, dims.k)
    query_text_emb = _t(QUERY_TEXT_EMB, f32, QUERY_TEXT_DIM)
    onnx_params = MappingProxyType({PARAM_ONNX_FILE: ONNX_FILE, PARAM_INTRA_OP_THREADS: "1"})
    specs = [
        ModelSpec(
            name=FEATURES_MODEL,
            kind=TritonModelKind.PYTHON,
            inputs=(
                _t(INPUT_USER_ID, i64, 1),
                _t(INPUT_QUERY, DataType.BYTES, 1),
                _t(INPUT_ITEM_ID, i64, 1),
            ),
            outputs=(
                _t(USER_INDEX, i64, 1),
                _t(QUERY_TOKENS, i64, dims.t),
                _t(ITEM_INDEX, i64, 1),
                _t(QUERY_CHECKED, DataType.BYTES, 1),
            ),
            backend_source=FEATURES_SOURCE,
            parameters=MappingProxyType(
                {
                    PARAM_USER_IDS: USER_IDS_FILE,
                    PARAM_ITEM_IDS: ITEM_IDS_FILE,
                    PARAM_TOKENS: TOKENS_FILE,
                    PARAM_QUERY_LEN: str(dims.t),
                }
            ),
        ),
        ModelSpec(
            name=QUERY_TEXT_MODEL,
            kind=TritonModelKind.PYTHON,
            inputs=(_t(INPUT_QUERY, DataType.BYTES, 1),),
            outputs=(query_text_emb,),
            backend_source=QUERY_TEXT_SOURCE,
            parameters=MappingProxyType(
                {
                    PARAM_ONNX_FILE: ONNX_FILE,
                    PARAM_TEXT_TOKENIZER: TEXT_TOKENIZER_FILE,
                    PARAM_TEXT_MAX_TOKENS: str(QUERY_TEXT_MAX_TOKENS),
                    PARAM_INTRA_OP_THREADS: "1",
                }
            ),
        ),
        ModelSpec(
            name=QUERY_ENCODER_MODEL,
            kind=TritonModelKind.EXPORTED,
            inputs=(_t(QUERY_TOKENS, i64, dims.t), query_text_emb),
            outputs=(query_emb,),
            backend_source=ONNX_RUNNER_SOURCE,
            parameters=onnx_params,
        ),
        ModelSpec(
            name=ITEM_ENCODER_MODEL,
            kind=TritonModelKind.EXPORTED,
            inputs=(_t(ITEM_INDEX, i64, 1),),
            outputs=(item_emb,),
            backend_source=ONNX_RUNNER_SOURCE,
            parameters=onnx_params,
        ),
        ModelSpec(
            name=PQ_RETRIEVAL_MODEL,
            kind=TritonModelKind.PYTHON,
            # user_id: the ensemble's input, the key of the user's online tail in the log
            inputs=(_t(USER_INDEX, i64, 1), query_emb, item_emb, _t(INPUT_USER_ID, i64, 1)),
            outputs=(topk_emb, topk_mask),
            backend_source=PQ_RETRIEVAL_SOURCE,
            parameters=MappingProxyType({PARAM_PQ_DIR: PQ_DIR, PARAM_TOP_K: str(dims.k)}),
        ),
        ModelSpec(
            name=RANKING_HEAD_MODEL,
            kind=TritonModelKind.EXPORTED,
            inputs=(query_emb, item_emb, topk_emb, topk_mask),
            outputs=(_t(OUTPUT_SCORE, f32, 1),),
            backend_source=ONNX_RUNNER_SOURCE,
            parameters=onnx_params,
        ),
    ]
    specs.append(
        ModelSpec(
            name=PIPELINE_MODEL,
            kind=TritonModelKind.PYTHON,
            inputs=specs[0].inputs,  # the ensemble's own tensors, in and out
            outputs=specs[-1].outputs,
            backend_source=PIPELINE_SOURCE,
        )
    )
    specs.append(
        ModelSpec(
            name=NATIVE_MODEL,
            kind=TritonModelKind.NATIVE,
            inputs=specs[-1].inputs,  # the fused step's: the ensemble's own tensors
            outputs=specs[-1].outputs,
            parameters=MappingProxyType({PARAM_SEARCH_MODEL: PIPELINE_MODEL}),
        )
    )
    return {s.name: s for s in specs}


FEATURES_MODEL = "features"
COMPOSING_MODELS: tuple[str, ...] = (
    FEATURES_MODEL,
    QUERY_TEXT_MODEL,
    QUERY_ENCODER_MODEL,
    ITEM_ENCODER_MODEL,
    PQ_RETRIEVAL_MODEL,
    RANKING_HEAD_MODEL,
)
# The models of a repository built with each graph: the steps are always there.
GRAPH_MODELS_OF: Mapping[Graph, tuple[str, ...]] = MappingProxyType(
    {
        Graph.STEPS: COMPOSING_MODELS,
        Graph.FUSED: (*COMPOSING_MODELS, PIPELINE_MODEL),
        Graph.NATIVE: (*COMPOSING_MODELS, PIPELINE_MODEL, NATIVE_MODEL),
    }
)
# Every model of the graphs (the per-step timings and the target checks look at each).
STEP_MODELS: tuple[str, ...] = GRAPH_MODELS_OF[Graph.NATIVE]
# The one step each graph that fuses the six schedules.
FUSED_STEP_OF: Mapping[Graph, str] = MappingProxyType(
    {Graph.FUSED: PIPELINE_MODEL, Graph.NATIVE: NATIVE_MODEL}
)
# Beside the graph, outside the ensemble: written by a build whose dataset has an image tower.
BESIDE_GRAPH_MODELS: tuple[str, ...] = (IMAGE_ENCODER_MODEL,)
# Every model a build may write (retire and the version checks look for each).
VERSION_MODELS: tuple[str, ...] = (*STEP_MODELS, *BESIDE_GRAPH_MODELS)
# Models a version may lack: their folder goes when its last version does (a model folder
# without versions would fail to load).
OPTIONAL_MODELS: tuple[str, ...] = (PIPELINE_MODEL, NATIVE_MODEL, *BESIDE_GRAPH_MODELS)
# Files a model keeps beside config.pbtxt, shared by all its versions (a build replaces them).
MODEL_FILES: Mapping[str, tuple[str, ...]] = MappingProxyType({NATIVE_MODEL: (NATIVE_LIBRARY,)})
EXPORTED_MODELS: tuple[str, ...] = (
    QUERY_ENCODER_MODEL,
    ITEM_ENCODER_MODEL,
    RANKING_HEAD_MODEL,
)
# Python models whose work is a graph of their own: the build exports it (gated by parity) and,
# for the gpu target, makes a TensorRT plan of it through the same code as the exported models.
GRAPH_MODELS: tuple[str, ...] = (QUERY_TEXT_MODEL,)
# The Python models that read the query string: on the CPU on every target (tokenizers), and
# each rejects a query over max_query_bytes before tokenizing it.
QUERY_STRING_MODELS: tuple[str, ...] = (FEATURES_MODEL, QUERY_TEXT_MODEL)
# The models that score users' online tails (seminar.serving.tail): the retrieval step and
# the fused step that runs it.
TAIL_MODELS: tuple[str, ...] = (PQ_RETRIEVAL_MODEL, PIPELINE_MODEL)


def image_encoder_spec(image_dim: int) -> ModelSpec:
    """The Python model that embeds a new item's image: image BYTES[1] -> image_emb FP32[F],
    image_tower_id BYTES[1]."""
    return ModelSpec(
        name=IMAGE_ENCODER_MODEL,
        kind=TritonModelKind.PYTHON,
        inputs=(_t(INPUT_IMAGE, DataType.BYTES, 1),),
        outputs=(
            _t(IMAGE_EMB, DataType.FP32, image_dim),
            _t(IMAGE_TOWER_ID, DataType.BYTES, 1),
        ),
        backend_source=IMAGE_ENCODER_SOURCE,
        parameters=MappingProxyType({PARAM_IMAGE_TOWER: IMAGE_TOWER_DIR}),
    )


def query_text_graph_spec() -> ModelSpec:
    """The MiniLM graph `query_text` runs: wordpiece ids and mask (B, S) -> (B, F) mean-pooled,
    L2-normalised embedding. S is dynamic (-1), the batch's longest query in wordpieces."""
    i64 = DataType.INT64
    return ModelSpec(
        name=QUERY_TEXT_MODEL,
        kind=TritonModelKind.EXPORTED,
        inputs=(_t(TEXT_INPUT_IDS, i64, -1), _t(TEXT_ATTENTION_MASK, i64, -1)),
        outputs=(_t(QUERY_TEXT_EMB, DataType.FP32, QUERY_TEXT_DIM),),
    )


def ensemble_spec(dims: PipelineDims, name: str = ENSEMBLE_MODEL) -> ModelSpec:
    """The contract ensemble (`seminar`) or a pinned one (`seminar_vN`): same tensors."""
    specs = model_specs(dims)
    return ModelSpec(
        name=name,
        kind=TritonModelKind.ENSEMBLE,
        inputs=specs[FEATURES_MODEL].inputs,
        outputs=specs[RANKING_HEAD_MODEL].outputs,
    )


# Step inputs read from an ensemble tensor of another name: (model, its input) -> tensor.
STEP_INPUT_SOURCES: Mapping[tuple[str, str], str] = MappingProxyType(
    {(QUERY_TEXT_MODEL, INPUT_QUERY): QUERY_CHECKED}
)


def ensemble_steps(graph: Graph = Graph.STEPS) -> tuple[EnsembleStep, ...]:
    """The ensemble's scheduling steps for `graph`; internal tensors keep their names between
    steps, except the inputs STEP_INPUT_SOURCES reroutes."""
    specs = model_specs(PipelineDims(d=1, h=1, k=1, t=1))  # names only; dims do not matter
    models = (FUSED_STEP_OF[graph],) if graph in FUSED_STEP_OF else COMPOSING_MODELS
    return tuple(
        EnsembleStep(
            model=name,
            input_map=MappingProxyType(
                {t.name: STEP_INPUT_SOURCES.get((name, t.name), t.name) for t in specs[name].inputs}
            ),
            output_map=MappingProxyType({t.name: t.name for t in specs[name].outputs}),
        )
        for name in models
    )


def pinned_ensemble_name(version: int) -> str:
    """The A/B handle of build `version` (docs/design.md section 5)."""
    return f"{ENSEMBLE_MODEL}_v{version}"


def build_info_path(repo: Path, version: int) -> Path:
    """`repo`/seminar_vN/N/build.json: written last by a build, it marks version N complete."""
    return Path(repo) / pinned_ensemble_name(version) / str(version) / BUILD_INFO_FILE
