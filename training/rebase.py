"""Serve a trained run on a newer catalog without retraining: rebase its model onto a dataset
that `seminar data append` grew from the one it was trained on.

A prepared dataset numbers its items, query words and attributes by sorting them, so an append
that brings new ones renumbers the old ones too: a checkpoint read beside the new dataset's
maps would score item A with item B's row. `rebase_model` re-indexes every table the model
keeps per item, per word and per attribute by external id or name:

    item rows        a known item keeps its trained id row; a new item gets the OOV row, the
                     row of every item the model never saw, and its own text, attributes and
                     image vector from the new dataset, which are what the model knows of it
    query words      a known word keeps its row; a new one takes <unk>'s, as serving would
    attributes       a known attribute keeps its row; a new one is left out of the item's mean
                     (it has no trained row), like an item without that attribute
    frozen features  item text, attributes, image vectors, query tokens and query text come
                     from the new dataset

Everything else (projections, gates, retrieval heads, the ranking head) is the run's. Rebasing
onto the dataset a run was trained on gives the same model, row for row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seminar.contract import FIRST_ITEM_INDEX, OOV_ITEM_INDEX, UNK_TOKEN_ID
from seminar.data.dataset import PreparedDataset
from seminar.errors import DataError
from seminar.model.config import ModelConfig
from seminar.model.seminar import SeminarModel
from seminar.training.checkpoint import Run, open_run_data

ID_TABLE = "item_encoder.id_table.weight"
TOKEN_TABLE = "query_encoder.tokens.weight"
ATTRIBUTE_TABLE = "item_encoder.attr_table.weight"
# Frozen per-item and per-query features: loaded from the new dataset, never copied.
FEATURE_BUFFERS = frozenset(
    {
        "query_tokens",
        "query_text",
        "item_encoder.item_text",
        "item_encoder.item_has_text",
        "item_encoder.item_attrs",
        "item_encoder.item_image",
        "item_encoder.item_has_image",
    }
)


@dataclass(frozen=True)
class Rebase:
    """What a rebase did, counted."""

    items_kept: int  # items of the new catalog the model was trained on
    items_new: int  # items it never saw: OOV id row plus their own content
    items_gone: int  # trained items the new catalog no longer has
    words_new: int  # query words scored as <unk>
    attributes_new: int  # attributes left out of their items' means

    @property
    def changed(self) -> bool:
        return bool(self.items_new or self.items_gone or self.words_new or self.attributes_new)

    def sentence(self) -> str:
        return (
            f"rebased onto the new catalog: {self.items_kept:,} trained items kept, "
            f"{self.items_new:,} new items scored by their content and the OOV id row, "
            f"{self.items_gone:,} trained items gone; {self.words_new:,} new query words read as "
            f"<unk>, {self.attributes_new:,} new attributes left out"
        )


def _rows_by_id(trained: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each external id of `target` (sorted unique): its position in `trained` (sorted
    unique) and whether it is there."""
    position = np.searchsorted(trained, target).clip(0, max(len(trained) - 1, 0))
    known = (trained[position] == target) if len(trained) else np.zeros(len(target), bool)
    return position, known


def _rows_by_name(trained: Sequence[str], target: Sequence[str]) -> np.ndarray:
    """For each name of `target`: its index in `trained`, -1 when it is new."""
    index = {name: row for row, name in enumerate(trained)}
    return np.array([index.get(name, -1) for name in target], dtype=np.int64)


def rebased_config(config: ModelConfig, target: PreparedDataset) -> ModelConfig:
    """The run's config with the vocabulary sizes of `target`; DataError where the two cannot
    share weights (another query length, text or image width)."""
    query_len = int(target.query_tokens.shape[1])
    if query_len != config.query_len:
        raise DataError(
            f"{target.path}: queries are {query_len} tokens long, the run's model reads "
            f"{config.query_len}; rebuild from a run trained on this dataset's lineage"
        )
    image_dim = 0 if target.item_image_emb is None else int(target.item_image_emb.shape[1])
    if image_dim != config.image_dim:
        raise DataError(
            f"{target.path}: image vectors have {image_dim} values, the run's model reads "
            f"{config.image_dim}"
        )
    if config.use_text and target.item_text_emb is None:
        raise DataError(f"{target.path}: has no text features; the run's model reads item text")
    return dataclasses.replace(
        config,
        num_items=target.n_item_rows,
        num_queries=target.n_queries,
        num_tokens=len(target.tokens),
        num_attrs=max(len(target.attributes), 1),
        attrs_per_item=max(int(target.item_attrs.shape[1]), 1),
    )


@torch.no_grad()
def rebase_model(
    model: SeminarModel, trained_on: PreparedDataset, target: PreparedDataset
) -> tuple[SeminarModel, Rebase]:
    """`model` (trained on `trained_on`) re-indexed onto `target` (module docstring)."""
    rebased = SeminarModel(rebased_config(model.config, target))
    position, known = _rows_by_id(np.asarray(trained_on.item_ids), np.asarray(target.item_ids))
    item_rows = np.concatenate(
        [[0, OOV_ITEM_INDEX], np.where(known, position + FIRST_ITEM_INDEX, OOV_ITEM_INDEX)]
    )
    word_rows = _rows_by_name(trained_on.tokens, target.tokens)
    attribute_rows = _rows_by_name(trained_on.attributes, target.attributes)

    def take(table: torch.Tensor, rows: np.ndarray, fallback: int | None) -> torch.Tensor:
        """table[rows], with rows -1 read from `fallback` (None: zeros)."""
        out = table[torch.as_tensor(np.where(rows < 0, 0, rows))].clone()
        if fallback is None:
            out[torch.as_tensor(rows < 0)] = 0.0
        else:
            out[torch.as_tensor(rows < 0)] = table[fallback]
        return out

    trained = model.state_dict()
    state = rebased.state_dict()
    for name in state:
        if name in FEATURE_BUFFERS:
            continue
        if name == ID_TABLE:
            state[name] = trained[name][torch.as_tensor(item_rows)].clone()
        elif name == TOKEN_TABLE:
            state[name] = take(trained[name], word_rows, UNK_TOKEN_ID)
        elif name == ATTRIBUTE_TABLE:
            state[name] = take(trained[name], attribute_rows, None)
        else:
            state[name] = trained[name]
    rebased.load_state_dict(state)
    item_attrs = np.array(target.item_attrs)
    new_attribute = np.flatnonzero(attribute_rows < 0)
    # An attribute without a trained row is no attribute at all, not a zero vector in the mean.
    item_attrs[np.isin(item_attrs, new_attribute)] = 0
    rebased.load_features(
        target.query_tokens,
        target.item_text_emb,
        item_attrs,
        target.item_image_emb,
        query_text_emb=target.query_text_emb,
    )
    rebased.eval()
    summary = Rebase(
        items_kept=int(known.sum()),
        items_new=int((~known).sum()),
        items_gone=int(len(trained_on.item_ids) - known.sum()),
        words_new=int((word_rows < 0).sum()),
        attributes_new=int(new_attribute.size),
    )
    return rebased, summary


def model_for_dataset(run: Run, data: PreparedDataset) -> tuple[SeminarModel, Rebase | None]:
    """The run's model as it reads `data`: itself when `data` is the dataset it was trained on
    (same checksum), else rebased onto it from that dataset (which must still be readable)."""
    expected = run.data.get("checksum")
    if not expected or data.checksum == expected:
        return run.model, None
    try:
        trained_on = open_run_data(run)
    except DataError as err:
        raise DataError(
            f"{data.path} is not the dataset {run.path} was trained on, and rebasing the model "
            f"onto it needs that dataset too: {err}"
        ) from err
    return rebase_model(run.model, trained_on, data)


def run_on(run: Run, data: str | Path | None = None) -> tuple[Run, PreparedDataset]:
    """The run as it reads `data` (default: its own dataset, checked by checksum): on a
    dataset grown from its own, its model rebased (module docstring), as `seminar build
    --data` serves it. The Run returned names that dataset as its own."""
    if data is None:
        return run, open_run_data(run)
    dataset = PreparedDataset.load(data)
    model, rebase = model_for_dataset(run, dataset)
    if rebase is None:
        return run, dataset
    grown = {**run.data, "path": str(dataset.path), "checksum": dataset.checksum}
    return dataclasses.replace(run, model=model, data=grown), dataset
