"""SEMINAR model: encoders, GSU retrievers, ESU + scorer head, PSU objectives.

Names resolve lazily so that `seminar.model.config` (the typed config and `ModelKind`, which
the command line offers as choices) imports without torch.
"""

from seminar.lazy import lazy_attributes

_EXPORTS = {
    "Modality": "seminar.model.config",
    "ModelConfig": "seminar.model.config",
    "ModelKind": "seminar.model.config",
    "ExactRetriever": "seminar.model.retrieval",
    "Retriever": "seminar.model.retrieval",
    "SeminarModel": "seminar.model.seminar",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_attributes(__name__, _EXPORTS)
