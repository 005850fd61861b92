"""Triton Python model `pq_retrieval`: user_index, query_emb, item_emb -> topk_emb, topk_mask.

Adapter only: `seminar.serving.retrieval.BatchRetrieval` groups the batch's rows by user and runs
the PQ GSU of `seminar.pq` (ADC top-K over the user's stored codes, exact gather of the K
winners); the prologue and the request loop are `seminar.serving.backend.PipelineModel`'s. On a
GPU instance the store lives in GPU memory and tensors move in and out through DLPack
(`FORCE_CPU_ONLY_INPUT_TENSORS: no`); on the CPU they are zero-copy numpy views.

A user_index that is neither -1 (cold start) nor a user of this version's sequence store gets
INVALID_ARG; the rest of the batch is served.

Metrics on /metrics (families kept on self: the backend drops a family that is collected):
rows scored, stored sequence length per (request, user), and the time of the top-K call.
"""

import time

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from torch.utils import dlpack

from seminar import contract
from seminar.serving.backend import BackendContext, PipelineModel, RowBatch, require_rows
from seminar.serving.retrieval import BatchRetrieval

_INPUTS = (contract.USER_INDEX, contract.QUERY_EMB, contract.ITEM_EMB)
_SEQ_BUCKETS = [0, 10, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000]
_TIME_BUCKETS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]


class TritonPythonModel(PipelineModel):
    pb_utils = pb_utils

    def load(self, context: BackendContext) -> None:
        device = context.parameter(contract.PARAM_DEVICE)
        if device == "cuda":
            if not context.on_gpu or not torch.cuda.is_available():
                raise RuntimeError(
                    f"pq_retrieval: device 'cuda' needs a KIND_GPU instance and a CUDA GPU "
                    f"(instance kind {context.instance_kind}, torch.cuda.is_available() = "
                    f"{torch.cuda.is_available()})"
                )
            device = f"cuda:{context.device_id}"
        elif device != "cpu":
            raise RuntimeError(
                f"pq_retrieval: parameter device must be cpu or cuda, got {device!r}"
            )
        # The version's manifest, which covers the PQ files, was verified already.
        self.retrieval = BatchRetrieval.load(
            context.artifact(contract.PARAM_PQ_DIR),
            device,
            context.int_parameter(contract.PARAM_TOP_K),
            verify=False,
        )
        labels = {"model": context.model_name, "version": context.version}
        self.rows_family = pb_utils.MetricFamily(
            name="seminar_pq_rows_total",
            description="Candidate rows scored by pq_retrieval",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.seq_family = pb_utils.MetricFamily(
            name="seminar_pq_sequence_length",
            description="Stored lifelong sequence length of each user served (0 = cold start)",
            kind=pb_utils.MetricFamily.HISTOGRAM,
        )
        self.time_family = pb_utils.MetricFamily(
            name="seminar_pq_topk_seconds",
            description="Time of one batch's PQ top-K + exact gather, in seconds",
            kind=pb_utils.MetricFamily.HISTOGRAM,
        )
        self.rows_metric = self.rows_family.Metric(labels=labels)
        self.seq_metric = self.seq_family.Metric(labels=labels, buckets=_SEQ_BUCKETS)
        self.time_metric = self.time_family.Metric(labels=labels, buckets=_TIME_BUCKETS)

    def read(self, request) -> dict:
        tensors = {}
        for name in _INPUTS:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            value = (
                torch.from_numpy(tensor.as_numpy())
                if tensor.is_cpu()
                else dlpack.from_dlpack(tensor.to_dlpack())
            )
            require_rows(name, value, self.input_dtypes[name], self.input_dims[name])
            tensors[name] = value
        users = tensors[contract.USER_INDEX].reshape(-1)  # (B, 1) -> (B,)
        self.retrieval.check_users(users.cpu().numpy())
        tensors[contract.USER_INDEX] = users
        return tensors

    def run(self, batch: RowBatch) -> dict:
        started = time.perf_counter()
        topk_emb, topk_mask = self.retrieval(*(batch.arrays[name] for name in _INPUTS))
        self.time_metric.observe(time.perf_counter() - started)
        self.rows_metric.increment(batch.rows)
        users = batch.arrays[contract.USER_INDEX].cpu().numpy()
        for low, high in zip(batch.offsets[:-1], batch.offsets[1:], strict=True):
            for length in self.retrieval.sequence_lengths(np.unique(users[low:high])):
                self.seq_metric.observe(float(length))
        return {contract.TOPK_EMB: topk_emb, contract.TOPK_MASK: topk_mask}

    def output_tensor(self, name: str, value: torch.Tensor):
        value = value.contiguous()
        if value.is_cuda:
            return pb_utils.Tensor.from_dlpack(name, dlpack.to_dlpack(value))
        return pb_utils.Tensor(name, value.numpy())
