"""Offline reference scores for one request: exactly what the serving pipeline computes.

As docs/design.md describes: the query is tokenised with the dataset tokenizer and embedded
with MiniLM (zeros for the empty query, so a query never seen in training is embedded as the
`query_text` step serves it), items map to indices (unknown -> OOV 1), the history is the
user's full event sequence, each candidate row is encoded by `query_encoder` / `item_encoder`,
retrieval picks the top-K per head (exact GSU, or any Retriever such as seminar.pq's), and
`ranking_head` returns a logit per candidate.

With an online tail (the user's events recorded after the dataset was built, read from the
event log with the policy serving uses, seminar.events.tail), the tail events are appended to
the history: each item mapped like a candidate (unknown -> OOV), each query tokenised and
embedded like a request's query. That is what `pq_retrieval` scores after a Record.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from seminar.data.dataset import PreparedDataset
from seminar.data.features import embed_query
from seminar.errors import UsageError
from seminar.events import Event
from seminar.model.retrieval import Retriever
from seminar.model.seminar import SeminarModel
from seminar.training.checkpoint import Run, load_run
from seminar.training.rebase import run_on


@torch.no_grad()
def score_indices(
    model: SeminarModel,
    query_tokens: Sequence[int],
    item_index: Sequence[int],
    seq_item: Sequence[int],
    seq_query: Sequence[int],
    retriever: Retriever | None = None,
    *,
    query_text_emb: Sequence[float] | np.ndarray | None = None,
    tail_item: Sequence[int] = (),
    tail_query_emb: torch.Tensor | None = None,
) -> list[float]:
    """Logits of candidates `item_index` for one (user history, query); empty history is scored.

    query_text_emb (F,) is the query's MiniLM embedding (seminar.data.features.embed_query);
    None = zeros, which the query encoder reads as "no text". tail_item (T,) and
    tail_query_emb (T, D): events after the history whose queries have no index (the online
    tail), scored by the exact GSU only.
    """
    model.eval()
    if query_text_emb is None:
        text = torch.zeros(1, model.config.text_dim)
    else:
        text = torch.from_numpy(np.array(query_text_emb, dtype=np.float32)).reshape(1, -1)
    q = model.query_encoder(torch.as_tensor([list(query_tokens)], dtype=torch.long), text)  # (1, D)
    cand = model.item_encoder(torch.as_tensor(list(item_index), dtype=torch.long))  # (C, D)
    items = torch.as_tensor(list(seq_item), dtype=torch.long)
    queries = torch.as_tensor(list(seq_query), dtype=torch.long)
    x_seq = model.pair(model.encode_queries(queries), model.item_encoder(items))  # (L, D)
    if len(tail_item):
        if retriever is not None or tail_query_emb is None:
            raise UsageError("an online tail is scored with the exact GSU and its query embeddings")
        tail = torch.as_tensor(list(tail_item), dtype=torch.long)
        x_seq = torch.cat([x_seq, model.pair(tail_query_emb, model.item_encoder(tail))])
        items = torch.cat([items, tail])
        queries = torch.cat([queries, torch.zeros_like(tail)])  # unused by the exact GSU
    mask = torch.ones(len(items), dtype=torch.bool)  # an empty history stays empty: cold start
    logits = model.score_candidates(
        q,
        cand.unsqueeze(0),  # (1, C, D)
        x_seq.unsqueeze(0),  # (1, L, D)
        items.unsqueeze(0),
        queries.unsqueeze(0),
        mask.unsqueeze(0),
        retriever,
    )  # (1, C)
    return [float(x) for x in logits[0]]


@torch.no_grad()
def encode_tail(
    model: SeminarModel, ds: PreparedDataset, tail: Sequence[Event]
) -> tuple[list[int], torch.Tensor]:
    """Item indices (T,) and query embeddings (T, D) of tail events, as serving encodes them."""
    model.eval()
    tokenizer = ds.tokenizer()
    texts = [event.history_query for event in tail]
    tokens = torch.as_tensor([tokenizer.encode(text) for text in texts], dtype=torch.long)
    text_emb = torch.from_numpy(np.stack([embed_query(text) for text in texts]).astype(np.float32))
    items = [ds.item_index(event.item_id) for event in tail]  # unknown -> OOV
    return items, model.query_encoder(tokens, text_emb)


def score_request(
    run: str | Path | Run,
    user_id: int,
    query: str,
    item_ids: Sequence[int],
    retriever: Retriever | None = None,
    data: str | Path | None = None,
    tail: Sequence[Event] = (),
) -> list[float]:
    """Logits for `item_ids` (external ids, in that order) of one user and query; `tail`:
    the user's events after the dataset (seminar.events.tail.read_tail), appended."""
    loaded, ds = run_on(run if isinstance(run, Run) else load_run(run), data)
    if not item_ids:
        raise UsageError("items: at least one candidate item id is required.")
    try:
        history = ds.history(ds.user_index(int(user_id)))  # the full lifelong sequence
        stored_item, stored_query = history.item, history.query
    except KeyError:
        if not tail:
            raise UsageError(f"user {user_id} is not in the dataset {ds.path}.") from None
        stored_item, stored_query = [], []  # a new user: the tail is the whole history
    tokens = ds.tokenizer().encode(query)
    items = [ds.item_index(int(i)) for i in item_ids]
    tail_item, tail_query_emb = encode_tail(loaded.model, ds, tail) if tail else ([], None)
    return score_indices(
        loaded.model,
        tokens,
        items,
        stored_item,
        stored_query,
        retriever,
        query_text_emb=embed_query(query),
        tail_item=tail_item,
        tail_query_emb=tail_query_emb,
    )
