"""Users' online tails at serving time: the events recorded after a version's store was built.

`pq_retrieval` scores the version's immutable base store plus, on every request, the user's
tail from the online event log (seminar.events): the events with seq above the watermark the
version's store was built at, the newest `max_tail_events` of them (seminar.events.tail). The
URL of the log comes from tritonserver's environment (`contract.EVENT_LOG_ENV`, set by
`seminar serve --event-log URL`); without it a version serves its base store alone.

Tail events are scored exactly. Each becomes the pair embedding the model would have given it
in the store, x = (fused item table)[item] + alpha * query_emb, where the item is mapped like a
request's (`features`' id map: an unknown item is OOV) and the query goes through this
version's own `features` tokenizer, `query_text` MiniLM graph and `query_encoder` graph, the
served path of a request's query. So a tail event scores as `seminar score` scores it with the
event appended to the history. Encoded query texts are cached (bounded LRU); the events
themselves are read fresh on every request, so a Record acknowledged before a Rank is in it
(read-your-writes).

A log that fails to answer does not fail the ranking: the request is served from the base
store, the failure is counted (`read_errors`) and logged, and reads pause for
`retry_after_s` so that a dead redis-server costs one timeout per pause, not one per request.
A log of another id than the one the version was compacted from is refused at load.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seminar import contract
from seminar.build.minilm import TextEmbedder
from seminar.build.repository import model_parameters
from seminar.errors import SeminarError
from seminar.events import Event, EventLog, Watermark, open_event_log
from seminar.events.tail import read_tail, require_tail_cap
from seminar.pq.artifacts import read_store_watermark
from seminar.serving.features import FeatureMapper
from seminar.serving.onnx_runner import OnnxRunner
from seminar.serving.query_text import QueryTextEncoder

LOG = logging.getLogger(__name__)
# A log read is on the request path: a redis-server that stopped answering must cost a ranking
# a fraction of its latency budget, not the client library's default of seconds.
LOG_TIMEOUT_S = 0.2


@dataclass
class TailEncoder:
    """Tail events -> item indices (T,) and query embeddings (T, D), through one version's own
    `features`, `query_text` and `query_encoder` artifacts."""

    features: FeatureMapper
    query_text: QueryTextEncoder
    query_encoder: OnnxRunner
    cache_size: int = 65_536  # distinct query texts kept encoded (D floats each)
    _cache: OrderedDict[str, np.ndarray] = field(default_factory=OrderedDict, repr=False)

    @classmethod
    def from_repo(cls, repo: Path, version: int | str) -> TailEncoder:
        """Version `version` of the composing models in repository `repo` (either target: the
        gpu target keeps each engine's ONNX graph beside its plan)."""
        repo, version = Path(repo), str(version)
        features_params = model_parameters(repo, contract.FEATURES_MODEL)
        text_params = model_parameters(repo, contract.QUERY_TEXT_MODEL)
        features = FeatureMapper.from_version_dir(
            repo / contract.FEATURES_MODEL / version,
            int(features_params[contract.PARAM_QUERY_LEN]),
        )
        text_dir = repo / contract.QUERY_TEXT_MODEL / version
        embedder = TextEmbedder(
            text_dir / contract.ONNX_FILE,
            text_dir / contract.TEXT_TOKENIZER_FILE,
            max_tokens=int(text_params[contract.PARAM_TEXT_MAX_TOKENS]),
        )
        spec = contract.model_specs(contract.PipelineDims(d=1, h=1, k=1, t=1))[
            contract.QUERY_ENCODER_MODEL
        ]  # names and dtypes only
        query_encoder = OnnxRunner(
            repo / contract.QUERY_ENCODER_MODEL / version / contract.ONNX_FILE,
            {tensor.name: tensor.dtype.numpy for tensor in spec.inputs},
            {tensor.name: tensor.dtype.numpy for tensor in spec.outputs},
        )
        max_query_bytes = int(text_params[contract.PARAM_MAX_QUERY_BYTES])
        return cls(features, QueryTextEncoder(embedder, max_query_bytes), query_encoder)

    def query_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """B query texts -> (B, D) query_emb; each text not in the cache is encoded once."""
        missing = sorted({text for text in texts if text not in self._cache})
        if missing:
            encoded = self.query_encoder.run(
                {
                    contract.QUERY_TOKENS: self.features.query_tokens(missing),
                    contract.QUERY_TEXT_EMB: self.query_text.embed(missing),
                }
            )[contract.QUERY_EMB]  # (M, D)
            for text, row in zip(missing, encoded, strict=True):
                self._cache[text] = row
        rows = []
        for text in texts:
            self._cache.move_to_end(text)
            rows.append(self._cache[text])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return np.stack(rows).astype(np.float32, copy=False)

    def encode(self, events: Sequence[Event]) -> tuple[np.ndarray, np.ndarray]:
        """T events -> item_index (T,) int64 (unknown item: OOV) and query_emb (T, D)."""
        items = np.asarray([event.item_id for event in events], dtype=np.int64)
        return self.features.item_index(items), self.query_embeddings(
            [event.query for event in events]
        )


class OnlineTails:
    """One version's reader of users' tails (thread-safe: a model instance may be called from
    one thread at a time, the lock only guards the encoder's cache against in-process use)."""

    def __init__(
        self,
        log: EventLog,
        mark: Watermark,
        encoder: TailEncoder,
        max_events: int,
        retry_after_s: float = 1.0,
    ) -> None:
        require_tail_cap(max_events)
        mark.check_log(log)
        self.log = log
        self.mark = mark
        self.encoder = encoder
        self.max_events = max_events
        self.retry_after_s = retry_after_s
        self.read_errors = 0  # reads that failed (each served from the base store alone)
        self._paused_until = 0.0
        self._lock = threading.Lock()

    @classmethod
    def open(cls, url: str, repo: Path, version: int | str, max_events: int) -> OnlineTails:
        """Tails from the log at `url` for version `version` of repository `repo`."""
        pq_dir = (
            Path(repo)
            / contract.PQ_RETRIEVAL_MODEL
            / str(version)
            / model_parameters(repo, contract.PQ_RETRIEVAL_MODEL)[contract.PARAM_PQ_DIR]
        )
        log = open_event_log(url, timeout_s=LOG_TIMEOUT_S)
        try:
            return cls(
                log, read_store_watermark(pq_dir), TailEncoder.from_repo(repo, version), max_events
            )
        except BaseException:
            log.close()
            raise

    @classmethod
    def from_environment(
        cls, repo: Path, version: int | str, max_events: int
    ) -> OnlineTails | None:
        """Tails from the log named by `contract.EVENT_LOG_ENV`; None when it is unset or
        the cap is 0 (the version serves its base store alone)."""
        url = os.environ.get(contract.EVENT_LOG_ENV, "")
        if not url or max_events == 0:
            return None
        return cls.open(url, repo, version, max_events)

    def events(self, user_id: int) -> list[Event]:
        """The user's tail, oldest first; [] while the log is failing (counted, logged)."""
        if time.monotonic() < self._paused_until:
            return []
        try:
            stored = read_tail(self.log, user_id, self.mark, self.max_events)
        except SeminarError as err:
            self.read_errors += 1
            self._paused_until = time.monotonic() + self.retry_after_s
            LOG.warning(
                "online tail of user %d not read, served from the base store: %s", user_id, err
            )
            return []
        return [entry.event for entry in stored]

    def encode(self, user_id: int) -> tuple[np.ndarray, np.ndarray] | None:
        """item_index (T,) and query_emb (T, D) of the user's tail; None when it is empty."""
        events = self.events(user_id)
        if not events:
            return None
        with self._lock:
            return self.encoder.encode(events)

    def close(self) -> None:
        self.log.close()
