"""SEMINAR model: encoders, GSU retrievers, ESU + scorer head, PSU objectives.

Names resolve lazily so that `seminar.model.config` (the typed config and `ModelKind`, which
the command line offers as choices) imports without torch.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Modality": "seminar.model.config",
    "ModelConfig": "seminar.model.config",
    "ModelKind": "seminar.model.config",
    "ExactRetriever": "seminar.model.retrieval",
    "Retriever": "seminar.model.retrieval",
    "SeminarModel": "seminar.model.seminar",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'seminar.model' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
