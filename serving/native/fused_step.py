"""The fused step's computation in C++ (fused_step.cc): mapped rows -> scores with no Python on
the path, for the `seminar_native` Triton backend (triton_backend.cc, the same code linked into
tritonserver) and for in-process workers alike.

`NativeFusedStep` opens it on the arrays of an `InProcessPipeline` (the same ONNX graphs, PQ
store, tables and projection), so the two answer the same rows alike. Rows without a query are
mapped and scored all in C++ (`score_ids`); for a row with a query the features and MiniLM
steps still run in Python and hand their outputs over (`score_rows`), and the Triton backend
forwards a search whole to the Python `pipeline` model served beside it. The users' online tails
are not read here yet: a pipeline with tails is refused, and a tritonserver that reads an event
log has the backend forward every request to that model, which scores them. `write_bundle` / `add_native_model`
write what the backend opens: the arrays as .npy files, spec.txt, the config and the library.

Built by `make setup` (`python -m seminar.serving.native.fused_step`) with the machine's g++,
together with seminar/pq/fused_scan.cpp (the PQ kernel). ONNX Runtime is the onnxruntime
wheel's own libonnxruntime, opened by path at run time; its C API headers come from Debian's
libonnxruntime-dev package (the same API, older than the wheel: a newer runtime serves an older
API version), fetched once at build time by its pinned sha256 into a git-ignored folder.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import lzma
import os
import shutil
import sys
import tarfile
import urllib.request
from collections.abc import Mapping
from functools import cache
from pathlib import Path

import numpy as np

from seminar import contract, manifest
from seminar.build import repository
from seminar.errors import ArtifactError
from seminar.pq import fused_scan
from seminar.serving.backend import RETRIEVAL_METRICS, RequestError
from seminar.serving.inprocess import InProcessPipeline

HERE = Path(__file__).parent
SOURCE = HERE / "fused_step.cc"
HEADER = HERE / "fused_step.h"
LIBRARY = HERE / "_fused_step.so"
INCLUDE = HERE / "include"  # the fetched ONNX Runtime headers (git-ignored)
ORT_HEADERS_DEB = (
    "https://deb.debian.org/debian/pool/main/o/onnxruntime/"
    "libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb"
)
ORT_HEADERS_SHA256 = "14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08"
ORT_HEADERS = (
    "onnxruntime_c_api.h",
    "onnxruntime_cxx_api.h",
    "onnxruntime_cxx_inline.h",
    "onnxruntime_float16.h",
)
ERROR_BYTES = 1024
# fused_step.cc's tensor order (its enum Name)
TENSOR_NAMES = (
    contract.QUERY_TOKENS,
    contract.QUERY_TEXT_EMB,
    contract.QUERY_EMB,
    contract.ITEM_INDEX,
    contract.ITEM_EMB,
    contract.TOPK_EMB,
    contract.TOPK_MASK,
    contract.OUTPUT_SCORE,
)
BAD_REQUEST, STEP_FAILED = 1, 2  # fused_step.cc's return codes
BACKEND_SOURCE = HERE / "triton_backend.cc"
BACKEND_LIBRARY = HERE / contract.NATIVE_LIBRARY  # Triton loads libtriton_<backend>.so
BUNDLE_DIR = "fused_step"  # in the model's version folder
NATIVE_MODEL = contract.NATIVE_MODEL
# The retrieval metrics (seminar.serving.backend.RETRIEVAL_METRICS) the backend reports: the
# online-tail ones stay with the Python step, which reads the tails.
NATIVE_METRICS = ("rows", "sequence", "time")


def _deb_member(deb: bytes, prefix: str) -> bytes:
    """The first member of a Debian package (an ar archive) whose name starts with `prefix`."""
    if not deb.startswith(b"!<arch>\n"):
        raise ArtifactError("the ONNX Runtime header package is not a Debian archive")
    at = 8
    while at + 60 <= len(deb):
        name = deb[at : at + 16].decode().strip().rstrip("/")
        size = int(deb[at + 48 : at + 58].decode().strip())
        if name.startswith(prefix):
            return deb[at + 60 : at + 60 + size]
        at += 60 + size + (size % 2)
    raise ArtifactError(f"the ONNX Runtime header package has no {prefix}*")


def fetch_headers(quiet: bool = False) -> Path:
    """ONNX Runtime's C/C++ API headers in INCLUDE, from Debian's package (checked by sha256)."""
    if all((INCLUDE / name).is_file() for name in ORT_HEADERS):
        return INCLUDE
    with urllib.request.urlopen(ORT_HEADERS_DEB, timeout=60) as response:
        deb = response.read()
    digest = hashlib.sha256(deb).hexdigest()
    if digest != ORT_HEADERS_SHA256:
        raise ArtifactError(f"{ORT_HEADERS_DEB} has sha256 {digest}, expected {ORT_HEADERS_SHA256}")
    data = _deb_member(deb, "data.tar")
    INCLUDE.mkdir(exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(data))) as archive:
        for name in ORT_HEADERS:
            member = archive.extractfile(f"./usr/include/onnxruntime/{name}")
            (INCLUDE / name).write_bytes(member.read())
    if not quiet:
        print(f"fetched ONNX Runtime headers into {INCLUDE}")
    return INCLUDE


def build(quiet: bool = False) -> Path:
    """Compile fused_step.cc with the PQ kernel into the shared library next to it, and with
    triton_backend.cc into the `seminar_native` Triton backend."""
    fetch_headers(quiet)
    sources = (SOURCE, fused_scan.SOURCE)
    flags = ("-I", str(INCLUDE), "-I", str(fused_scan.SOURCE.parent))
    # the Triton backend links the same step; Triton's own symbols resolve when it loads it
    for library, extra in ((LIBRARY, ()), (BACKEND_LIBRARY, (BACKEND_SOURCE,))):
        fused_scan.compile_library(library, (*extra, *sources), (*flags, "-ldl"))
        if not quiet:
            print(f"built {library}")
    return LIBRARY


def onnxruntime_library() -> Path:
    """The onnxruntime wheel's own libonnxruntime.so.<version>."""
    import onnxruntime

    capi = Path(onnxruntime.__file__).parent / "capi"
    found = sorted(capi.glob("libonnxruntime.so.*"))
    if not found:
        raise ArtifactError(f"no libonnxruntime.so.* in {capi} (the onnxruntime wheel's)")
    return found[-1]


# the spec's field for each exported graph
_ONNX_FIELDS = {
    contract.QUERY_ENCODER_MODEL: "query_encoder_onnx",
    contract.ITEM_ENCODER_MODEL: "item_encoder_onnx",
    contract.RANKING_HEAD_MODEL: "ranking_head_onnx",
}
_PATHS = ("onnxruntime_library", *_ONNX_FIELDS.values())
_KERNEL_SIZES = ("code_size", "n_subspaces", "sub_dim", "sample_stride", "depth_percent", "n_users")
_STORE = ("offsets", "event_item", "event_query", "block_offsets", "blocks")


class _Spec(ctypes.Structure):
    """fused_step.cc's SeminarFusedStepSpec, field for field."""

    _fields_ = [
        *((name, ctypes.c_char_p) for name in _PATHS),
        ("tensor_names", ctypes.POINTER(ctypes.c_char_p)),
        *((name, ctypes.c_int64) for name in ("query_len", "text_dim", "dim", "heads", "k")),
        ("rerank", ctypes.c_int64),
        ("alpha", ctypes.c_float),
        *((name, ctypes.c_void_p) for name in ("gsu_weight", "gsu_bias", "rotation", "centroids")),
        *((name, ctypes.c_int64) for name in _KERNEL_SIZES),
        *((name, ctypes.c_void_p) for name in _STORE),
        ("item_table", ctypes.c_void_p),
        ("item_rows", ctypes.c_int64),
        ("query_table", ctypes.c_void_p),
        ("query_rows", ctypes.c_int64),
        ("user_ids", ctypes.c_void_p),
        ("user_id_count", ctypes.c_int64),
        ("item_ids", ctypes.c_void_p),
        ("item_id_count", ctypes.c_int64),
    ]


@cache
def _library() -> ctypes.CDLL | None:
    """The built library, or None (not built, or older than one of its sources)."""
    if not LIBRARY.exists():
        return None
    import torch  # noqa: F401  (its libgomp first: the PQ kernel binds to torch's OpenMP)

    built = LIBRARY.stat().st_mtime
    sources = (SOURCE, HEADER, fused_scan.SOURCE, fused_scan.HEADER)
    if any(src.exists() and src.stat().st_mtime > built for src in sources):
        return None
    library = ctypes.CDLL(str(LIBRARY))
    library.seminar_fused_step_open.restype = ctypes.c_void_p
    library.seminar_fused_step_open.argtypes = [
        ctypes.POINTER(_Spec),
        ctypes.c_char_p,
        ctypes.c_size_t,
    ]
    library.seminar_fused_step_score.restype = ctypes.c_int
    library.seminar_fused_step_score.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, *[ctypes.c_void_p] * 5, ctypes.c_char_p, ctypes.c_size_t
    ]  # fmt: skip
    library.seminar_fused_step_score_ids.restype = ctypes.c_int
    library.seminar_fused_step_score_ids.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, *[ctypes.c_void_p] * 3, ctypes.c_char_p, ctypes.c_size_t
    ]  # fmt: skip
    library.seminar_fused_step_close.argtypes = [ctypes.c_void_p]
    return library


def available() -> bool:
    return _library() is not None and fused_scan.FusedScanner.available()


def _array(value, dtype) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(value), dtype=dtype)


class NativeFusedStep:
    """`score_rows(rows) -> (N, 1)` float32, InProcessPipeline.score_rows in C++.

    One caller at a time (the step keeps its scratch between calls); ctypes releases the GIL
    for the call, so threads of one process can each hold a step of their own."""

    def __init__(self, pipeline: InProcessPipeline, onnx_files: Mapping[str, Path]) -> None:
        self._handle = None
        if not available():
            raise ArtifactError(
                f"the native fused step is not built ({LIBRARY.name}: run `make setup`) or "
                "this CPU has no AVX2"
            )
        retrieval = pipeline.retrieval
        if retrieval.tails is not None:
            raise ArtifactError("the native fused step does not read online tails yet")
        retriever = retrieval.retriever
        store, codebooks = retriever.store, retriever.codebooks
        if retriever.device.type != "cpu" or codebooks.nbits != 4 or not store.fastscan:
            raise ArtifactError("the native fused step runs 4-bit fast-scan PQ on the CPU")
        if retriever.config.rerank < 2:
            # without a rerank the Python retriever keeps faiss's ADC top-K, which the kernel
            # (a shortlist always reranked) does not reproduce
            raise ArtifactError("the native fused step needs a PQ rerank (rerank >= 2)")
        self.pipeline = pipeline
        self.library = _library()
        m, s, _, d = codebooks.centroids.shape
        # kept alive with the step: it reads them in place
        self._keep = {
            "gsu_weight": _array(retriever.gsu_weight.numpy(), np.float32),
            "gsu_bias": None
            if retriever.gsu_bias is None
            else _array(retriever.gsu_bias.numpy(), np.float32),
            "rotation": None
            if retriever.rotation is None
            else _array(retriever.rotation.numpy(), np.float32),
            "centroids": _array(
                codebooks.centroids.reshape(m * s, -1, d).transpose(0, 2, 1), np.float32
            ),
            "offsets": _array(store.offsets, np.int64),
            "event_item": _array(store.item, np.int32),
            "event_query": _array(store.query, np.int32),
            "block_offsets": _array(store.block_offsets, np.int64),
            "blocks": _array(store.codes, np.uint8),
            "item_table": _array(retriever.item_table.numpy(), np.float32),
            "query_table": None
            if retriever.query_table is None
            else _array(retriever.query_table.numpy(), np.float32),
            "user_ids": _array(pipeline.features.user_ids, np.int64),
            "item_ids": _array(pipeline.features.item_ids, np.int64),
        }
        dim, heads, _ = retriever.gsu_weight.shape
        self.onnx_files = {name: Path(onnx_files[name]) for name in contract.EXPORTED_MODELS}
        # the step's sizes and settings (the bundle's spec.txt writes the same)
        self.settings = {
            "query_len": pipeline.features.tokenizer.length,
            "text_dim": contract.QUERY_TEXT_DIM,
            "dim": dim,
            "heads": heads,
            "k": retrieval.k,
            "rerank": retriever.config.rerank,
            "alpha": retrieval.alpha,
            "code_size": m * s,
            "n_subspaces": s,
            "sub_dim": d,
            "sample_stride": fused_scan.SAMPLE_STRIDE,
            "depth_percent": fused_scan.SAMPLE_DEPTH_PERCENT,
        }
        keep = self._keep
        self._names = (ctypes.c_char_p * len(TENSOR_NAMES))(*(n.encode() for n in TENSOR_NAMES))

        def pointer(name: str) -> int | None:
            return None if keep[name] is None else keep[name].ctypes.data

        spec = _Spec(
            onnxruntime_library=str(onnxruntime_library()).encode(),
            **{_ONNX_FIELDS[name]: str(path).encode() for name, path in self.onnx_files.items()},
            tensor_names=self._names,
            n_users=store.n_users,
            item_rows=len(keep["item_table"]),
            query_rows=0 if keep["query_table"] is None else len(keep["query_table"]),
            user_id_count=len(keep["user_ids"]),
            item_id_count=len(keep["item_ids"]),
            **self.settings,
            **{name: pointer(name) for name in keep},
        )
        error = ctypes.create_string_buffer(ERROR_BYTES)
        self._handle = self.library.seminar_fused_step_open(ctypes.byref(spec), error, ERROR_BYTES)
        if not self._handle:
            raise ArtifactError(f"the native fused step failed to open: {error.value.decode()}")

    @classmethod
    def from_repo(cls, repo: Path, version: int) -> NativeFusedStep:
        """Version `version` of every composing model of `repo` (cpu target), no tails."""
        pipeline = InProcessPipeline.from_repo(repo, version)
        onnx_files = {name: runner.path for name, runner in pipeline.encoders.items()}
        return cls(pipeline, onnx_files)

    def write_bundle(self, folder: Path) -> Path:
        """What the `seminar_native` Triton backend opens (triton_backend.cc): the step's arrays
        as .npy files and spec.txt (settings, the graphs' paths inside the model repository,
        <model>/<version>/<file>, tensor names, the ONNX Runtime library) in `folder`, with the
        manifest.json of them all (the backend checks every file against it)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, array in self._keep.items():
            if array is not None:
                np.save(folder / f"{name}.npy", array)
        lines = {
            **self.settings,
            **{
                _ONNX_FIELDS[name]: Path(*path.parts[-3:]).as_posix()
                for name, path in self.onnx_files.items()
            },
            "onnxruntime_library": onnxruntime_library(),
            "tensor_names": " ".join(TENSOR_NAMES),  # fused_step.cc's order
            # with this set, the backend forwards every request to the search model (tails)
            "event_log_env": contract.EVENT_LOG_ENV,
            # the retrieval metrics the backend reports: "name KIND buckets|- description"
            **{
                f"metric_{key}": f"{name} {kind} "
                f"{','.join(repr(float(b)) for b in buckets) if buckets else '-'} {description}"
                for key, name, description, kind, buckets in RETRIEVAL_METRICS
                if key in NATIVE_METRICS
            },
            # the float32 the step reads, written exactly
            "alpha": repr(float(np.float32(self.settings["alpha"]))),
        }
        (folder / "spec.txt").write_text(
            "".join(f"{key} {value}\n" for key, value in lines.items())
        )
        manifest.write_manifest(folder)
        return folder

    def score_rows(self, rows: Mapping[str, np.ndarray]) -> np.ndarray:
        """Scores (N, 1) float32 of rows the features step mapped (with the ensemble's
        user_id), as InProcessPipeline.score_rows; RequestError for a row the step refuses."""
        n = len(rows[contract.USER_INDEX])
        text = self.pipeline.query_text(rows[contract.QUERY_CHECKED])[contract.QUERY_TEXT_EMB]
        inputs = (
            _array(rows[contract.USER_INDEX].reshape(n), np.int64),
            _array(rows[contract.ITEM_INDEX].reshape(n), np.int64),
            _array(rows[contract.QUERY_TOKENS], np.int64),
            _array(text, np.float32),
        )
        return self._call(self.library.seminar_fused_step_score, inputs)

    def score_ids(self, user_id: np.ndarray, item_id: np.ndarray) -> np.ndarray:
        """Scores (N, 1) float32 of rows with an empty query from the ensemble's user_id and
        item_id (N,) int64, the features step done in C++ too; RequestError for a negative id."""
        users, items = _array(user_id, np.int64).reshape(-1), _array(item_id, np.int64).reshape(-1)
        if len(users) != len(items):
            raise RequestError(
                f"inputs disagree on the number of rows: user_id {len(users)}, item_id {len(items)}"
            )
        return self._call(self.library.seminar_fused_step_score_ids, (users, items))

    def score(self, user_id: int, query: str, item_ids: np.ndarray) -> np.ndarray:
        """Scores (B,) float32 of one user's B candidates, as InProcessPipeline.score: without a
        query all in C++, with one the features and MiniLM steps in Python first."""
        if query == "":
            return self.score_ids(np.full(len(item_ids), user_id), item_ids).reshape(-1)
        return self.score_rows(self.pipeline.map_request(user_id, query, item_ids)).reshape(-1)

    def _call(self, function, inputs: tuple[np.ndarray, ...]) -> np.ndarray:
        """One C call over `inputs` (N rows each) into fresh scores (N, 1)."""
        scores = np.empty((len(inputs[0]), 1), np.float32)
        error = ctypes.create_string_buffer(ERROR_BYTES)
        code = function(
            self._handle, len(scores), *(a.ctypes.data for a in inputs), scores.ctypes.data,
            error, ERROR_BYTES,
        )  # fmt: skip
        if code == BAD_REQUEST:
            raise RequestError(error.value.decode())
        if code != 0:
            raise ArtifactError(f"the native fused step failed: {error.value.decode()}")
        return scores

    def close(self) -> None:
        if self._handle:
            self.library.seminar_fused_step_close(self._handle)
            self._handle = None

    def __del__(self) -> None:
        self.close()


def install_library(folder: Path) -> Path:
    """The backend library in model folder `folder`, where Triton looks for it first. A new
    file renamed over the old one: a tritonserver serving the model has the old one mapped,
    and rewriting it in place would change the code under its feet (SIGBUS, a crash)."""
    folder.mkdir(parents=True, exist_ok=True)
    staged = folder / f".{BACKEND_LIBRARY.name}.new"
    shutil.copy(BACKEND_LIBRARY, staged)
    os.replace(staged, folder / BACKEND_LIBRARY.name)
    return folder / BACKEND_LIBRARY.name


def write_native_version(repo: Path, version: int) -> Path:
    """Version `version` of `seminar_native` in `repo`, which holds that version of the composing
    models (`seminar build --graph native` calls this on its staged version): the bundle of
    the step opened on them, and the library; the build writes the config. ArtifactError when
    the step cannot serve them (not built, no AVX2, or PQ it does not run)."""
    step = NativeFusedStep.from_repo(repo, version)
    try:
        step.write_bundle(Path(repo) / NATIVE_MODEL / str(version) / BUNDLE_DIR)
    finally:
        step.close()
    return install_library(Path(repo) / NATIVE_MODEL)


def add_native_model(
    repo: Path,
    step: NativeFusedStep,
    version: int,
    instances: int,
    name: str = NATIVE_MODEL,
    search_model: str | None = contract.PIPELINE_MODEL,
) -> Path:
    """A `seminar_native` model named `name` in `repo` (which holds the composing models the
    step was opened on), beside what a build writes: version `version`'s bundle, the config a
    build writes with `instances` instances, and the library. Searches are forwarded to
    version `version` of `search_model`, which must be served beside it (None: they are
    refused with UNSUPPORTED)."""
    folder = Path(repo) / name
    step.write_bundle(folder / str(version) / BUNDLE_DIR)
    spec = contract.model_specs(contract.PipelineDims(d=1, h=1, k=1, t=1))[NATIVE_MODEL]
    serving = repository.ServingConfig(fused_instances=instances, graph=contract.Graph.NATIVE)
    config = repository.model_config(spec, contract.Target.CPU, serving)
    config.name = name
    if search_model is None:
        del config.parameters[contract.PARAM_SEARCH_MODEL]
    else:
        config.parameters[contract.PARAM_SEARCH_MODEL].string_value = search_model
    repository.write_config(folder / contract.CONFIG_FILE, config)
    install_library(folder)
    return folder


if __name__ == "__main__":
    build(quiet="--quiet" in sys.argv)
