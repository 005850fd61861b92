"""From a trained model to PQ artifacts and back: the adapter between seminar.model and the
plain-tensor PQ core, and the on-disk layout the Triton `pq_retrieval` backend loads.

Layout of an artifact directory:
    manifest.json            format, config, k, alpha, modalities, D, H, event_log (the
                             Watermark of the online event log the store holds the events up
                             to: serving scores the events after it as the user's tail), and
                             the files below with their sha256 (seminar.manifest)
    codebooks.npz/.json      centroids (M, S, k, d)
    tables.safetensors       exact component tables "table.<m>" (N_m, D) and their codes
                             "codes.<m>" (N_m, S) uint8; "gsu.weight" (D, H, D), "gsu.bias" (H, D)
    store/                   the lifelong sequence store (its own manifest.json)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from seminar import contract, manifest
from seminar.errors import ArtifactError, DataError
from seminar.events.log import Watermark
from seminar.pq.codebooks import Codebooks, codebook_tables, train_codebooks
from seminar.pq.config import PQConfig
from seminar.pq.retriever import PQRetriever
from seminar.pq.store import SequenceStore, build_sequence_store

ARTIFACT_FORMAT = "seminar-pq/2"
# Still loads: /1 listed its files under its own manifest layout of then (seminar.manifest
# reads it); the store folder keeps its own format.
ARTIFACT_FORMAT_V1 = "seminar-pq/1"
_FILES = ("codebooks.npz", "codebooks.json", "tables.safetensors")
AFFINE_TOLERANCE = 1e-4


def gsu_projection(model: Any, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Recover u = x_t @ W + b from `model.gsu_query_vectors` by probing it with the basis.

    Returns W (D, H, D) and b (H, D); refuses a map that is not affine (checked on random x).
    """
    probe = torch.cat([torch.zeros(1, dim), torch.eye(dim)])  # (D+1, D)
    with torch.no_grad():
        out = model.gsu_query_vectors(probe).float()  # (D+1, H, D)
        bias = out[0]  # (H, D)
        weight = out[1:] - bias  # (D, H, D): row j = u(e_j) - b
        x = torch.randn(8, dim, generator=torch.Generator().manual_seed(0))
        want = model.gsu_query_vectors(x).float()
        got = torch.einsum("be,ehd->bhd", x, weight) + bias
    err = (want - got).abs().max().item()
    if err > AFFINE_TOLERANCE * max(1.0, want.abs().max().item()):
        raise ArtifactError(f"model.gsu_query_vectors is not affine in x_t (max error {err:.2e})")
    return weight.contiguous(), bias.contiguous()


def model_tables(model: Any) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {
            m: t.detach().float().cpu().contiguous() for m, t in model.component_tables().items()
        }


def _model_top_k(model: Any) -> int:
    return int(getattr(getattr(model, "config", None), "top_k", 50))


def _model_alpha(model: Any) -> float | None:
    alpha = getattr(getattr(model, "config", None), "alpha", None)
    return None if alpha is None else float(alpha)


def build_pq_retriever(model: Any, dataset: Any, config: PQConfig = PQConfig()) -> PQRetriever:
    """Train codebooks on the model's component tables, encode every table row, build the
    sequence store of every user of `dataset` (a PreparedDataset or anything with
    seq_offsets / seq_item / seq_query arrays) and return the retriever (CPU)."""
    was_training = model.training
    model.eval()
    try:
        tables = model_tables(model)
        dim = next(iter(tables.values())).shape[1]
        weight, bias = gsu_projection(model, dim)
    finally:
        model.train(was_training)
    # the tables the codes index (with fused_items: query and the summed item table), and the
    # exact tables the retriever reranks and gathers from
    tables_np = codebook_tables({m: t.numpy() for m, t in tables.items()}, config)
    tables = {m: torch.from_numpy(t) for m, t in tables_np.items()}
    codebooks = train_codebooks(tables_np, config)
    table_codes = {m: codebooks.encode(m, t) for m, t in tables_np.items()}
    store = None
    if dataset is not None:
        store = build_sequence_store(
            dataset.seq_offsets,
            dataset.seq_item,
            dataset.seq_query,
            table_codes,
            codebooks.modalities,
            codebooks.nbits,
        )
    return PQRetriever(
        codebooks,
        tables,
        table_codes,
        config,
        store=store,
        gsu_weight=weight,
        gsu_bias=bias,
        k=_model_top_k(model),
        alpha=_model_alpha(model),
    )


def save_retriever(
    retriever: PQRetriever, out_dir: Path, event_log: Watermark = Watermark()
) -> manifest.Manifest:
    """Write a retriever (with its store and projection) to `out_dir`; returns the manifest.
    `event_log`: the log position the store's sequences hold the events up to."""
    from safetensors.torch import save_file

    if retriever.store is None or retriever.gsu_weight is None:
        raise RuntimeError("only a retriever with a sequence store and GSU weights can be saved")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    retriever.codebooks.save(out_dir / "codebooks.npz")
    tensors = {}
    for m in retriever.modalities:
        tensors[f"table.{m}"] = retriever.tables[m].cpu().contiguous()
        tensors[f"codes.{m}"] = retriever.table_codes[m].cpu().contiguous()
    tensors["gsu.weight"] = retriever.gsu_weight.cpu().contiguous()
    tensors["gsu.bias"] = retriever.gsu_bias.cpu().contiguous()
    save_file(tensors, str(out_dir / "tables.safetensors"))
    retriever.store.save(out_dir / "store")  # the store lists its own files
    fields = {
        "format": ARTIFACT_FORMAT,
        "config": retriever.config.to_json(),
        "k": retriever.k,
        "alpha": retriever.alpha,
        "dim": retriever.codebooks.dim,
        "heads": int(retriever.gsu_weight.shape[1]),
        "modalities": list(retriever.modalities),
        "bytes_per_event": retriever.store.bytes_per_event,
        "n_users": retriever.store.n_users,
        "n_events": retriever.store.n_events,
        contract.EVENT_LOG_FIELD: event_log.to_json(),
    }
    return manifest.write_manifest(out_dir, fields, _FILES)


def save_pq_artifacts(
    model: Any, dataset: Any, out_dir: Path, config: PQConfig = PQConfig()
) -> dict:
    """build_pq_retriever + save_retriever: everything `pq_retrieval` needs, with sha256s.
    The store carries the dataset's event log mark (PreparedDataset.event_log_mark; W 0 for
    plain arrays)."""
    mark = getattr(dataset, "event_log_mark", Watermark())
    return save_retriever(build_pq_retriever(model, dataset, config), out_dir, mark)


def read_store_watermark(artifact_dir: Path) -> Watermark:
    """The event log position a saved store holds the events up to: serving's tail of a user
    is the user's events after it. Stores saved before marks were recorded hold none (W 0)."""
    saved = manifest.read_manifest(Path(artifact_dir))
    try:
        return Watermark.from_json(saved.fields.get(contract.EVENT_LOG_FIELD))
    except DataError as err:
        raise ArtifactError(f"{saved.path}: field '{contract.EVENT_LOG_FIELD}': {err}") from None


def load_pq_retriever(
    artifact_dir: Path, device: str = "cpu", verify: bool = True, mmap: bool = True
) -> PQRetriever:
    """Open a saved artifact directory; `verify` checks every file's sha256 first (skip it when
    a manifest around this folder, a model version's, was verified already)."""
    from safetensors.torch import load_file

    artifact_dir = Path(artifact_dir)
    saved = manifest.read_manifest(artifact_dir)
    fmt = saved.fields.get("format")
    if fmt not in (ARTIFACT_FORMAT, ARTIFACT_FORMAT_V1):
        raise ArtifactError(f"{saved.path}: format {fmt!r}, want {ARTIFACT_FORMAT!r}")
    if verify:
        saved.verify()
    for name in _FILES:
        saved.file(name)
    codebooks = Codebooks.load(artifact_dir / "codebooks.npz")
    tensors = load_file(str(artifact_dir / "tables.safetensors"))
    fields = saved.fields
    modalities = fields["modalities"]
    tables = {m: tensors[f"table.{m}"] for m in modalities}
    table_codes = {m: tensors[f"codes.{m}"].numpy().astype(np.uint8) for m in modalities}
    store = SequenceStore.load(artifact_dir / "store", mmap=mmap, verify=verify)
    return PQRetriever(
        codebooks,
        tables,
        table_codes,
        PQConfig.from_json(fields["config"]),
        store=store,
        gsu_weight=tensors["gsu.weight"],
        gsu_bias=tensors["gsu.bias"],
        k=int(fields["k"]),
        device=device,
        alpha=fields.get("alpha"),
    )
