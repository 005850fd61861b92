"""Triton Python model `pq_retrieval`: user_index, query_emb, item_emb, user_id -> topk_emb,
topk_mask.

Adapter only: `seminar.serving.retrieval.BatchRetrieval` groups the batch's rows by user and runs
the PQ GSU of `seminar.pq` (ADC top-K over the user's stored codes, exact gather of the K
winners), with the user's online tail (`seminar.serving.tail.OnlineTails`: the events recorded
after this version's store, read from the log named by SEMINAR_EVENT_LOG in tritonserver's
environment) scored exactly beside them; the prologue and the request loop are
`seminar.serving.backend.PipelineModel`'s. On a GPU instance the store lives in GPU memory and
tensors move in and out through DLPack (`FORCE_CPU_ONLY_INPUT_TENSORS: no`); on the CPU they
are zero-copy numpy views.

A user_index that is neither -1 (cold start) nor a user of this version's sequence store gets
INVALID_ARG; the rest of the batch is served.

Metrics on /metrics (families kept on self: the backend drops a family that is collected):
rows scored, stored sequence length per (request, user), online tail length per (batch, user),
tail reads that failed (served from the store alone), and the time of the top-K call.
"""

import time

import torch
import triton_python_backend_utils as pb_utils
from torch.utils import dlpack

from seminar import contract
from seminar.events.tail import DEFAULT_MAX_TAIL_EVENTS
from seminar.serving.backend import (
    BackendContext,
    PipelineModel,
    RetrievalMetrics,
    RowBatch,
    require_rows,
)
from seminar.serving.retrieval import BatchRetrieval
from seminar.serving.tail import OnlineTails

_INPUTS = (contract.USER_INDEX, contract.QUERY_EMB, contract.ITEM_EMB, contract.INPUT_USER_ID)


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
            # the instance's GPU becomes current: torch's default stream and any kernel launch
            # that goes by the current device land there, not on GPU 0
            torch.cuda.set_device(context.device_id)
        elif device != "cpu":
            raise RuntimeError(
                f"pq_retrieval: parameter device must be cpu or cuda, got {device!r}"
            )
        pq_dir = context.artifact(contract.PARAM_PQ_DIR)
        tail_cap = context.parameters.get(contract.PARAM_MAX_TAIL_EVENTS)
        self.tails = OnlineTails.from_environment(
            context.version_dir.parent.parent,  # the repository: <repo>/pq_retrieval/<N>
            context.version,
            DEFAULT_MAX_TAIL_EVENTS if tail_cap is None else int(tail_cap),
        )
        # The version's manifest, which covers the PQ files, was verified already.
        self.retrieval = BatchRetrieval.load(
            pq_dir,
            device,
            context.int_parameter(contract.PARAM_TOP_K),
            verify=False,
            tails=self.tails,
        )
        self.metrics = RetrievalMetrics(pb_utils, context, self.tails)

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
        tensors[contract.INPUT_USER_ID] = tensors[contract.INPUT_USER_ID].reshape(-1)
        return tensors

    def run(self, batch: RowBatch) -> dict:
        started = time.perf_counter()
        topk_emb, topk_mask = self.retrieval(*(batch.arrays[name] for name in _INPUTS))
        self.metrics.observe(self.retrieval, batch, time.perf_counter() - started)
        return {contract.TOPK_EMB: topk_emb, contract.TOPK_MASK: topk_mask}

    def output_tensor(self, name: str, value: torch.Tensor):
        value = value.contiguous()
        if value.is_cuda:
            return pb_utils.Tensor.from_dlpack(name, dlpack.to_dlpack(value))
        return pb_utils.Tensor(name, value.numpy())
