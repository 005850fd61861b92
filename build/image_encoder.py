"""The `image_encoder` model of a repository version: a dataset's image tower, served by Triton.

`write_image_encoder(repo, version, tower)` writes `image_encoder/<version>/` (the tower folder,
the backend, a manifest) and `image_encoder/config.pbtxt`: a Python model on the CPU that turns
a new item's encoded image into its image modality vector (serving/backends/image_encoder.py).
It stands beside the ensemble, not in it: `seminar build` writes it into every version whose
dataset has an image tower (docs/serving.md, "Images of items that arrive after a build").
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from seminar import contract, manifest
from seminar.build.artifacts import copy_backend
from seminar.build.repository import ServingConfig, tensor_config, write_config
from seminar.errors import ArtifactError


def write_image_encoder(
    repo: Path, version: int, tower: Path, serving: ServingConfig | None = None
) -> Path:
    """Write the model's version folder and config; returns the config's path."""
    config_file = tower / "config.json"
    if not config_file.is_file():
        raise ArtifactError(f"{tower}: not an image tower folder (no config.json)")
    image_dim = int(json.loads(config_file.read_text(encoding="utf-8"))["tower"]["dim"])
    spec = contract.image_encoder_spec(image_dim)
    version_dir = repo / spec.name / str(version)
    if version_dir.exists():
        raise ArtifactError(f"{version_dir} exists; a version is written once")
    version_dir.mkdir(parents=True)
    shutil.copytree(tower, version_dir / contract.IMAGE_TOWER_DIR)
    copy_backend(spec.backend_source, version_dir)
    manifest.write_manifest(version_dir)
    config = tensor_config(spec, contract.IMAGE_ENCODER_MAX_BATCH)
    config.backend = "python"
    config.version_policy.all.SetInParent()
    config.dynamic_batching.max_queue_delay_microseconds = 2_000
    group = config.instance_group.add()
    group.kind, group.count = model_config_pb2.ModelInstanceGroup.KIND_CPU, 1
    parameters = dict(spec.parameters)
    execution_env = (serving or ServingConfig()).execution_env
    if execution_env:
        parameters[contract.PARAM_EXECUTION_ENV] = execution_env
    for key, value in sorted(parameters.items()):
        config.parameters[key].string_value = value
    return write_config(repo / spec.name / contract.CONFIG_FILE, config)
