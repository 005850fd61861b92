"""Triton Python model `pipeline`, the fused graph's one step (contract.Graph.FUSED, cpu
target): user_id, query, item_id -> score, the ensemble's own tensors.

Adapter only: `seminar.serving.inprocess.InProcessPipeline` runs the six steps' library calls
(features, query_text, query_encoder, item_encoder, pq_retrieval with the users' online tails,
ranking_head) on this version's artifacts in the six models' version folders, in this one
process: no tensor crosses an IPC between steps and no step waits in a dynamic batcher of its
own. The prologue and the request loop are `seminar.serving.backend.PipelineModel`'s; every
request of a batch is mapped on its own (a negative id, a query over max_query_bytes or a
non-UTF-8 query gets INVALID_ARG, the other requests are still served), then all accepted rows
are scored in one call. The retrieval step's metrics are reported under this model's name.
"""

import torch
import triton_python_backend_utils as pb_utils

from seminar import contract, manifest
from seminar.events.tail import DEFAULT_MAX_TAIL_EVENTS
from seminar.serving.backend import BackendContext, PipelineModel, RetrievalMetrics, RowBatch
from seminar.serving.inprocess import InProcessPipeline
from seminar.serving.tail import OnlineTails

_INPUTS = (contract.INPUT_USER_ID, contract.INPUT_QUERY, contract.INPUT_ITEM_ID)


class TritonPythonModel(PipelineModel):
    pb_utils = pb_utils

    def load(self, context: BackendContext) -> None:
        torch.set_num_threads(1)  # one instance per core: threads would fight the others
        repo = context.version_dir.parent.parent  # <repo>/pipeline/<N>
        for name in contract.COMPOSING_MODELS:  # the artifacts this step reads are theirs
            manifest.verify_manifest(repo / name / context.version)
        tail_cap = context.parameters.get(contract.PARAM_MAX_TAIL_EVENTS)
        tails = OnlineTails.from_environment(
            repo, context.version, DEFAULT_MAX_TAIL_EVENTS if tail_cap is None else int(tail_cap)
        )
        # The manifests above cover the PQ files: they are not hashed twice.
        self.pipeline = InProcessPipeline.from_repo(
            repo, int(context.version), tails=tails, verify=False
        )
        self.metrics = RetrievalMetrics(pb_utils, context, tails)

    def read(self, request) -> dict:
        """The request's rows mapped by the features step (with the user_id the tails are
        keyed by): the mapping is per request, so a bad row rejects only its request."""
        arrays = {name: self.checked_input(request, name) for name in _INPUTS}
        rows = self.pipeline.features(*(arrays[name] for name in _INPUTS))
        rows[contract.INPUT_USER_ID] = arrays[contract.INPUT_USER_ID]
        return rows

    def run(self, batch: RowBatch) -> dict:
        scores = self.pipeline.score_rows(batch.arrays)
        self.metrics.observe(self.pipeline.retrieval, batch, self.pipeline.retrieval_seconds)
        return {contract.OUTPUT_SCORE: scores}
