"""SEMINAR model: encoders, GSU retrievers, ESU + scorer head, PSU objectives."""

from seminar.model.config import Modality, ModelConfig, ModelKind
from seminar.model.retrieval import ExactRetriever, Retriever
from seminar.model.seminar import SeminarModel

__all__ = ["ExactRetriever", "Modality", "ModelConfig", "ModelKind", "Retriever", "SeminarModel"]
