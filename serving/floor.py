"""The `floor` model: a trivial Python-backend model with the ensemble's inputs and output.

`seminar bench serving` serves it next to `seminar` on the same server to measure what Triton,
the Python backend and the gRPC client cost by themselves. Its source is
serving/backends/floor.py; this module writes it into a repository as `floor/1/model.py`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from seminar import contract
from seminar.build import repository

FLOOR_MODEL = "floor"


def floor_config(max_batch_size: int) -> model_config_pb2.ModelConfig:
    """The floor's config: the ensemble's tensors, the Python backend, one CPU instance."""
    # The ensemble's inputs and output have one element per row whatever the model's sizes.
    spec = contract.ensemble_spec(contract.PipelineDims(d=1, h=1, k=1, t=1), FLOOR_MODEL)
    config = repository.tensor_config(spec, max_batch_size)
    config.backend = "python"
    config.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_CPU, count=1)
    return config


def floor_source() -> Path:
    """Where the floor model.py lives (importing `seminar.serving.backends` needs Triton)."""
    return contract.backend_source_path("floor.py")


def write_floor_model(repo: Path, max_batch_size: int = 4096) -> Path:
    """Write `repo/floor/{config.pbtxt, 1/model.py}`; returns the model folder."""
    model_dir = repo / FLOOR_MODEL
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy2(floor_source(), model_dir / "1" / contract.PYTHON_FILE)
    repository.write_config(model_dir / contract.CONFIG_FILE, floor_config(max_batch_size))
    return model_dir
