"""What every Python-backend model.py of the pipeline shares, without Triton.

The model.py files in build/backends/ only adapt tensors; the checks they run at `initialize`
(numpy < 2, parameters present, artifact checksums) and the row bookkeeping of `execute`
(concatenate valid requests, split the outputs back) live here, where they run in plain unit
tests. Nothing here imports `triton_python_backend_utils`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seminar.build import pipeline as P


class RequestError(ValueError):
    """One request is malformed; the model answers it with INVALID_ARG and serves the rest."""


class ArtifactError(RuntimeError):
    """A model version's artifacts are missing or corrupt; the model must not report READY."""


def check_numpy() -> None:
    """Refuse numpy >= 2: the Python backend stub then reads all-zero inputs without an error
    (docs/environment.md), so a model that loaded would silently serve garbage."""
    major = int(np.__version__.split(".")[0])
    if major >= 2:
        raise ArtifactError(
            f"numpy {np.__version__} in the Triton stub's environment ({np.__file__}); "
            "the Python backend needs numpy < 2 (install numpy<2 in the execution environment)"
        )


@dataclass(frozen=True)
class BackendContext:
    """What `initialize(args)` tells a model: its name, version folder and config."""

    model_name: str
    version_dir: Path
    config: Mapping
    parameters: Mapping[str, str]
    # On a GPU instance the stub passes the device; "cpu" on KIND_CPU instances.
    instance_kind: str
    device_id: int

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> BackendContext:
        config = json.loads(args["model_config"])
        parameters = {
            key: value.get("string_value", "")
            for key, value in config.get("parameters", {}).items()
        }
        return cls(
            model_name=args["model_name"],
            version_dir=Path(args["model_repository"]) / str(args["model_version"]),
            config=config,
            parameters=parameters,
            instance_kind=str(args.get("model_instance_kind", "CPU")).upper(),
            device_id=int(args.get("model_instance_device_id", 0) or 0),
        )

    def parameter(self, key: str) -> str:
        """A required config `parameters` entry; a missing one fails the load."""
        value = self.parameters.get(key, "")
        if not value:
            raise ArtifactError(
                f"model {self.model_name}: config.pbtxt has no parameter {key!r} "
                f"(have: {sorted(self.parameters)})"
            )
        return value

    def int_parameter(self, key: str) -> int:
        value = self.parameter(key)
        try:
            return int(value)
        except ValueError:
            raise ArtifactError(
                f"model {self.model_name}: parameter {key!r} must be an integer, got {value!r}"
            ) from None

    def artifact(self, key: str) -> Path:
        """The version-dir file or folder named by parameter `key`; must exist."""
        path = self.version_dir / self.parameter(key)
        if not path.exists():
            raise ArtifactError(f"model {self.model_name}: artifact {path} is missing")
        return path

    def tensor_dtypes(self, section: str) -> dict[str, np.dtype]:
        """numpy dtype of every `input` / `output` tensor, as config.pbtxt declares it."""
        return {t["name"]: P.DataType(t["data_type"]).numpy for t in self.config.get(section, [])}

    @property
    def on_gpu(self) -> bool:
        return self.instance_kind == "GPU"


def verify_manifest(version_dir: Path) -> int:
    """Check this version's artifacts against its manifest.json (sha256, size, .npy shape);
    build/ owns the format. Imported lazily: build.artifacts pulls in torch."""
    from seminar.build.artifacts import verify_manifest as verify

    return verify(version_dir)


def _cat(parts: list):
    """Concatenate numpy arrays or torch tensors (GPU inputs arrive as torch via DLPack)."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    import torch

    return torch.cat(parts)


@dataclass(frozen=True)
class RowBatch:
    """The rows of several requests concatenated, so one library call serves them all.

    `valid[r]` is the index of request r in the batch or -1 if it was rejected; rows of
    accepted request r are `[offsets[i], offsets[i + 1])` with i = valid[r].
    """

    arrays: dict[str, np.ndarray]  # or torch tensors, for GPU inputs
    offsets: np.ndarray  # (R_valid + 1,)
    valid: tuple[int, ...]

    @classmethod
    def concat(cls, per_request: Sequence[dict[str, np.ndarray] | None]) -> RowBatch:
        kept = [r for r in per_request if r is not None]
        valid, i = [], 0
        for r in per_request:
            valid.append(i if r is not None else -1)
            i += r is not None
        sizes = [len(next(iter(r.values()))) for r in kept]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        arrays = {name: _cat([r[name] for r in kept]) for name in kept[0]} if kept else {}
        return cls(arrays=arrays, offsets=offsets, valid=tuple(valid))

    @property
    def rows(self) -> int:
        return int(self.offsets[-1])

    def split(self, outputs: Mapping[str, np.ndarray], request: int) -> dict[str, np.ndarray]:
        """Request `request`'s rows of each output (views, no copy)."""
        i = self.valid[request]
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return {name: array[lo:hi] for name, array in outputs.items()}


def read_requests(
    requests: Sequence[Any], read: Callable[[Any], dict[str, Any]]
) -> tuple[list[dict[str, Any] | None], dict[int, RequestError]]:
    """`read` every request of a Triton batch; a bad one is set aside, not raised.

    Returns the per-request tensors (None where the request was bad) and the errors by request
    position, so that `execute` answers the bad requests with INVALID_ARG and still serves the rest.
    """
    per_request: list[dict[str, Any] | None] = []
    errors: dict[int, RequestError] = {}
    for position, request in enumerate(requests):
        try:
            per_request.append(read(request))
        except RequestError as error:
            per_request.append(None)
            errors[position] = error
    return per_request, errors


def require_rows(name: str, array, dtype: np.dtype, row_shape: tuple[int, ...]) -> None:
    """Check a numpy array or torch tensor is (B, *row_shape) of `dtype` with B > 0.

    Triton checks inputs against config.pbtxt before a model sees them; this guards the model
    when it is called in-process or through a config that drifted from the code.
    """
    got = np.dtype(str(array.dtype).removeprefix("torch."))
    if got != dtype:
        raise RequestError(f"input {name} must be {dtype}, got {got}")
    if array.ndim != 1 + len(row_shape) or tuple(array.shape[1:]) != row_shape:
        raise RequestError(
            f"input {name} must have shape (B, {', '.join(map(str, row_shape))}), "
            f"got {tuple(array.shape)}"
        )
    if array.shape[0] == 0:
        raise RequestError(f"input {name} has no rows (empty batch)")
