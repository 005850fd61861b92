"""The `seminar` ensemble's computation in-process: the same artifacts and the same library
calls the Triton models make (features, query_text -> encoders -> pq_retrieval -> head).

Two users: `seminar bench serving` times it without Triton next to the served ensemble, so the
difference is what Triton, gRPC and the Python backend's IPC cost; and the fused graph's one
Triton step (`pipeline`, contract.Graph.FUSED) runs it inside Triton, so a request crosses one
IPC instead of one per step.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seminar import contract
from seminar.build.repository import model_parameters
from seminar.serving.client import request_arrays
from seminar.serving.features import FeatureMapper
from seminar.serving.onnx_runner import OnnxRunner
from seminar.serving.query_text import QueryTextEncoder
from seminar.serving.retrieval import BatchRetrieval
from seminar.serving.tail import OnlineTails


def _dtypes(repo: Path, model: str) -> tuple[dict[str, np.dtype], dict[str, np.dtype]]:
    from tritonclient.grpc import model_config_pb2

    from seminar.build.repository import parse_config

    config = parse_config(repo / model / contract.CONFIG_FILE)

    def dtypes(tensors) -> dict[str, np.dtype]:
        return {
            t.name: contract.DataType(model_config_pb2.DataType.Name(t.data_type)).numpy
            for t in tensors
        }

    return dtypes(config.input), dtypes(config.output)


@dataclass
class InProcessPipeline:
    features: FeatureMapper
    query_text: QueryTextEncoder
    encoders: dict[str, OnnxRunner]  # query_encoder, item_encoder, ranking_head
    retrieval: BatchRetrieval
    retrieval_seconds: float = 0.0  # the last score_rows call's retrieval (top-K + gather)

    @classmethod
    def from_repo(
        cls,
        repo: Path,
        version: int,
        threads: int = 1,
        tails: OnlineTails | None = None,
        verify: bool = True,
    ) -> InProcessPipeline:
        """Load version `version` of every composing model of `repo` (cpu target); `tails`:
        users' online tails to score beside the stored sequences (OnlineTails.open); `verify`
        checks the PQ artifacts' sha256s (False when the caller verified the version's
        manifests, which cover them)."""
        repo = Path(repo)
        feat = model_parameters(repo, contract.FEATURES_MODEL)
        features = FeatureMapper.from_version_dir(
            repo / contract.FEATURES_MODEL / str(version),
            int(feat[contract.PARAM_QUERY_LEN]),
            int(feat[contract.PARAM_MAX_QUERY_BYTES]),
        )
        query_text = QueryTextEncoder.from_version_dir(
            repo / contract.QUERY_TEXT_MODEL / str(version),
            int(model_parameters(repo, contract.QUERY_TEXT_MODEL)[contract.PARAM_MAX_QUERY_BYTES]),
        )
        encoders = {}
        for name in contract.EXPORTED_MODELS:
            inputs, outputs = _dtypes(repo, name)
            onnx_file = model_parameters(repo, name)[contract.PARAM_ONNX_FILE]
            encoders[name] = OnnxRunner(
                repo / name / str(version) / onnx_file, inputs, outputs, intra_op_threads=threads
            )
        pq = model_parameters(repo, contract.PQ_RETRIEVAL_MODEL)
        retrieval = BatchRetrieval.load(
            repo / contract.PQ_RETRIEVAL_MODEL / str(version) / pq[contract.PARAM_PQ_DIR],
            "cpu",
            int(pq[contract.PARAM_TOP_K]),
            verify=verify,
            tails=tails,
        )
        return cls(features=features, query_text=query_text, encoders=encoders, retrieval=retrieval)

    def map_request(self, user_id: int, query: str, item_ids: np.ndarray) -> dict[str, np.ndarray]:
        """One request's rows as the features step maps them, with the ensemble's user_id
        (what score_rows takes)."""
        request = request_arrays(user_id, query, item_ids)
        rows = self.features(
            request[contract.INPUT_USER_ID],
            request[contract.INPUT_QUERY],
            request[contract.INPUT_ITEM_ID],
        )
        rows[contract.INPUT_USER_ID] = request[contract.INPUT_USER_ID]
        return rows

    def score(self, user_id: int, query: str, item_ids: np.ndarray) -> np.ndarray:
        """Scores (B,) float32 of one user's B candidates, exactly as the ensemble computes."""
        return self.score_rows(self.map_request(user_id, query, item_ids)).reshape(-1)

    def score_rows(self, rows: Mapping[str, np.ndarray]) -> np.ndarray:
        """Scores (N, 1) float32 of rows the features step mapped (its outputs plus the
        ensemble's user_id), which may be the rows of several requests (users)."""
        n = len(rows[contract.INPUT_USER_ID])
        text = self.query_text(rows[contract.QUERY_CHECKED])
        query_emb = self.encoders[contract.QUERY_ENCODER_MODEL].run(
            {
                contract.QUERY_TOKENS: rows[contract.QUERY_TOKENS],
                contract.QUERY_TEXT_EMB: text[contract.QUERY_TEXT_EMB],
            }
        )[contract.QUERY_EMB]  # (N, D)
        item_emb = self.encoders[contract.ITEM_ENCODER_MODEL].run(
            {contract.ITEM_INDEX: rows[contract.ITEM_INDEX]}
        )[contract.ITEM_EMB]  # (N, D)
        started = time.perf_counter()
        topk_emb, topk_mask = self.retrieval(
            torch.from_numpy(rows[contract.USER_INDEX].reshape(n)),  # (N, 1) -> (N,)
            torch.from_numpy(query_emb),
            torch.from_numpy(item_emb),
            torch.from_numpy(rows[contract.INPUT_USER_ID].reshape(n)),
        )
        self.retrieval_seconds = time.perf_counter() - started
        out = self.encoders[contract.RANKING_HEAD_MODEL].run(
            {
                contract.QUERY_EMB: query_emb,
                contract.ITEM_EMB: item_emb,
                contract.TOPK_EMB: topk_emb.numpy(),
                contract.TOPK_MASK: topk_mask.numpy(),
            }
        )
        return out[contract.OUTPUT_SCORE]  # (N, 1)


def build_info(repo: Path, version: int) -> dict:
    """The pinned ensemble's build.json (dims, data, exports) for reports."""
    path = contract.build_info_path(repo, version)
    return json.loads(path.read_text()) if path.is_file() else {}
