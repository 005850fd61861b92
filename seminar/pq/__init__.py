"""Multi-modal product quantization for the GSU (docs/model.md, "Approximate retrieval").

Core (plain arrays and tensors, no model needed): `train_codebooks`, `build_sequence_store`,
`seminar.pq.adc` (torch ADC), `seminar.pq.faiss_scan` (faiss fast path),
`seminar.pq.triton_kernel` (GPU kernels), `PQRetriever`.
Adapters to a trained model: `build_pq_retriever`, `save_pq_artifacts`, `load_pq_retriever`;
`read_store_watermark` (the event log position a saved store holds the events up to).

Names resolve lazily so that a command importing only `seminar.pq.config` keeps `seminar --help`
free of torch.
"""

from seminar.lazy import lazy_attributes

_EXPORTS = {
    "build_pq_retriever": "seminar.pq.artifacts",
    "load_pq_retriever": "seminar.pq.artifacts",
    "save_pq_artifacts": "seminar.pq.artifacts",
    "save_retriever": "seminar.pq.artifacts",
    "read_store_watermark": "seminar.pq.artifacts",
    "Codebooks": "seminar.pq.codebooks",
    "train_codebooks": "seminar.pq.codebooks",
    "PQConfig": "seminar.pq.config",
    "ScoringBackend": "seminar.pq.config",
    "PQRetriever": "seminar.pq.retriever",
    "SequenceStore": "seminar.pq.store",
    "build_sequence_store": "seminar.pq.store",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_attributes(__name__, _EXPORTS)
