"""The `floor` model: a trivial Python-backend model with the ensemble's inputs and output.

`seminar bench serving` serves it next to `seminar` on the same server to measure what Triton,
the Python backend and the gRPC client cost by themselves. Its source is
serving/backends/floor.py; this module writes it into a repository as `floor/1/model.py`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from seminar import contract
from seminar.contract import INPUT_ITEM_ID, INPUT_QUERY, INPUT_USER_ID, OUTPUT_SCORE

FLOOR_MODEL = "floor"


def _config(max_batch_size: int) -> str:
    def tensor(name: str, dtype: str) -> str:
        return f'{{ name: "{name}" data_type: {dtype} dims: [ 1 ] }}'

    inputs = ",\n  ".join(
        [
            tensor(INPUT_USER_ID, "TYPE_INT64"),
            tensor(INPUT_QUERY, "TYPE_STRING"),
            tensor(INPUT_ITEM_ID, "TYPE_INT64"),
        ]
    )
    return (
        f'name: "{FLOOR_MODEL}"\n'
        'backend: "python"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"input [\n  {inputs}\n]\n"
        f"output [ {tensor(OUTPUT_SCORE, 'TYPE_FP32')} ]\n"
        "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
    )


def floor_source() -> Path:
    """Where the floor model.py lives (importing `seminar.serving.backends` needs Triton)."""
    return contract.backend_source_path("floor.py")


def write_floor_model(repo: Path, max_batch_size: int = 4096) -> Path:
    """Write `repo/floor/{config.pbtxt, 1/model.py}`; returns the model folder."""
    model_dir = repo / FLOOR_MODEL
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy2(floor_source(), model_dir / "1" / "model.py")
    (model_dir / "config.pbtxt").write_text(_config(max_batch_size))
    return model_dir
