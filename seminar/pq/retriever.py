"""PQRetriever: PQ GSU for offline evaluation (Retriever protocol) and for serving (per user).

Both paths call `PQRetriever.topk_positions`, so an offline score and a served score of the
same (user, target) pick the same events. Shape letters as in seminar.pq.adc; U users.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from seminar.errors import ArtifactError, UsageError
from seminar.pq.adc import adc_scores_decode, adc_scores_lut, build_luts, masked_topk
from seminar.pq.codebooks import ITEM_MODALITY, QUERY_MODALITY, Codebooks
from seminar.pq.config import PQConfig, ScoringBackend
from seminar.pq.faiss_scan import pack_fastscan, unpack_fastscan
from seminar.pq.store import SequenceStore


@dataclass(frozen=True)
class DeviceStore:
    """A sequence store's per-event arrays copied once into GPU memory, so that a request
    slices its user's events there instead of copying them from the host memory map: item,
    query (N,) int64 and the codes exactly as stored (8-bit (N, C), or 4-bit fast-scan blocks,
    half the bytes, which the `triton` backend reads in place). The offsets stay on the host."""

    item: torch.Tensor
    query: torch.Tensor
    codes: torch.Tensor

    @classmethod
    def upload(cls, store: SequenceStore, device: torch.device) -> DeviceStore:
        def put(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=dtype)

        return cls(
            put(store.item, torch.long), put(store.query, torch.long), put(store.codes, torch.uint8)
        )

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.item, self.query, self.codes))


if TYPE_CHECKING:
    from seminar.pq.fused_scan import ScanResult


def resolve_backend(backend: ScoringBackend, nbits: int, device: torch.device) -> ScoringBackend:
    """`auto` -> the fastest measured path for this code width and device; refuse impossible ones."""
    if backend == ScoringBackend.AUTO:
        if device.type == "cpu" and nbits == 4:
            return ScoringBackend.FAISS
        return ScoringBackend.TORCH_DECODE
    if backend == ScoringBackend.FAISS and device.type != "cpu":
        raise UsageError(f"backend 'faiss' runs on the CPU only, the retriever is on {device}")
    if backend == ScoringBackend.TRITON and device.type != "cuda":
        raise UsageError(f"backend 'triton' needs a CUDA GPU, the retriever is on {device}")
    return backend


class PQRetriever:
    """Multi-modal PQ GSU.

    codebooks: trained centroids (M, S, k, d).
    tables: exact component tables name -> (N_m, D) (already fusion-weighted), for the gather
        of the K winners and for the optional exact rerank.
    table_codes: name -> (N_m, S) uint8, codes of every table row (offline `select`).
    store: the lifelong sequence store (serving `retrieve`); None for offline use only.
    gsu_weight (D, H, D), gsu_bias (H, D): u = x_t @ W + b, i.e. model.gsu_query_vectors.
    k: the GSU top-K used by `retrieve` when none is given.
    alpha: the model's pair weight (recorded for serving, which receives query and item
        embeddings separately); None when built without a model.
    fused_scan: with the faiss backend, collect the shortlist of a reranked search with the
        fused scan kernel (seminar.pq.fused_scan) when it is built; False keeps faiss's own
        top-K collection (the bench's side-by-side row).
    """

    def __init__(
        self,
        codebooks: Codebooks,
        tables: Mapping[str, torch.Tensor],
        table_codes: Mapping[str, np.ndarray],
        config: PQConfig = PQConfig(),
        store: SequenceStore | None = None,
        gsu_weight: torch.Tensor | None = None,
        gsu_bias: torch.Tensor | None = None,
        k: int = 50,
        device: str | torch.device = "cpu",
        alpha: float | None = None,
        fused_scan: bool = True,
    ) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError("device 'cuda' was asked for but torch sees no CUDA GPU")
        missing = [m for m in codebooks.modalities if m not in tables or m not in table_codes]
        if missing:
            raise ArtifactError(f"tables/table codes missing for modalities {missing}")
        item_modalities = [m for m in codebooks.modalities if m != QUERY_MODALITY]
        if config.fused_items != (item_modalities == [ITEM_MODALITY]):
            raise ArtifactError(
                f"config says fused_items={config.fused_items}, the codebooks' item modalities "
                f"are {item_modalities}"
            )
        self.codebooks = codebooks
        self.config = config
        self.k = k
        # the model's pair weight: serving forms x_t = alpha * query_emb + (1 - alpha) * item_emb
        self.alpha = alpha
        self.backend = resolve_backend(config.backend, codebooks.nbits, self.device)
        self.modalities = codebooks.modalities
        self.centroids = torch.from_numpy(codebooks.centroids).to(self.device)
        # OPQ: the centroids live in a rotated space; the ADC scores R u against them
        self.rotation = (
            None
            if codebooks.rotation is None
            else torch.from_numpy(codebooks.rotation).to(self.device)
        )
        self.tables = {m: tables[m].detach().float().to(self.device) for m in self.modalities}
        # The gather of exact embeddings needs only the fused item table: summing the item
        # modalities once here turns M row gathers per event into two (query + item).
        item_parts = [self.tables[m] for m in self.modalities if m != QUERY_MODALITY]
        self.item_table = torch.stack(item_parts).sum(0) if item_parts else None
        self.query_table = self.tables.get(QUERY_MODALITY)
        self.table_codes = {
            m: torch.from_numpy(np.asarray(table_codes[m], dtype=np.uint8)).to(self.device)
            for m in self.modalities
        }
        self.store = store
        if store is not None and tuple(store.modalities) != tuple(self.modalities):
            raise ArtifactError(
                f"store modalities {store.modalities} != codebooks {self.modalities}"
            )
        # On a GPU the whole store is resident (uploaded here, once); on the CPU it stays the
        # memory map it was loaded as.
        self.device_store = (
            DeviceStore.upload(store, self.device)
            if store is not None and self.device.type == "cuda"
            else None
        )
        self.gsu_weight = None if gsu_weight is None else gsu_weight.float().to(self.device)
        self.gsu_bias = None if gsu_bias is None else gsu_bias.float().to(self.device)
        self.fused_scan = fused_scan
        self._faiss = None
        self._fused = None
        if self.backend == ScoringBackend.FAISS:
            from seminar.pq.faiss_scan import FaissScanner
            from seminar.pq.fused_scan import FusedScanner

            self._faiss = FaissScanner(codebooks)
            # A reranked search: faiss's top-K collection costs more than its scan at a 4K
            # shortlist (reports/pq.md); the fused kernel collects it in the scan and reranks.
            four_bit = codebooks.nbits == 4
            if fused_scan and config.rerank > 1 and four_bit and FusedScanner.available():
                # on torch's OpenMP threads: the kernel binds to torch's runtime
                self._fused = FusedScanner(codebooks, threads=torch.get_num_threads())

    def with_config(self, config: PQConfig) -> PQRetriever:
        """The same codebooks, tables, store and projection scored with another backend /
        rerank setting (the code width must match the trained codebooks)."""
        if config.nbits != self.codebooks.nbits or config.n_subspaces != self.codebooks.n_subspaces:
            raise UsageError(
                f"config asks for {config.n_subspaces} x {config.nbits}-bit codes, the codebooks "
                f"are {self.codebooks.n_subspaces} x {self.codebooks.nbits}-bit"
            )
        if config.fused_items != self.config.fused_items:
            raise UsageError(
                f"config asks for fused_items={config.fused_items}, the codebooks were trained "
                f"with fused_items={self.config.fused_items} (modalities {self.modalities})"
            )
        return PQRetriever(
            self.codebooks,
            self.tables,
            {m: c.cpu().numpy() for m, c in self.table_codes.items()},
            config,
            store=self.store,
            gsu_weight=self.gsu_weight,
            gsu_bias=self.gsu_bias,
            k=self.k,
            device=self.device,
            alpha=self.alpha,
            fused_scan=self.fused_scan,
        )

    def with_fused_scan(self, enabled: bool) -> PQRetriever:
        """The same retriever with the fused shortlist kernel on or off (faiss collects)."""
        retriever = self.with_config(self.config)
        if not enabled:
            retriever.fused_scan, retriever._fused = False, None
        return retriever

    # -- pieces --------------------------------------------------------------------------------

    def exact_vectors(self, item: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Exact pair embeddings x = tables["query"][q] + sum_m tables[m][i]: (...) -> (..., D).

        index_select on flat indices: on the CPU it is several times faster than advanced
        indexing for the (B, H, K) gathers of a request."""
        out = None
        if self.item_table is not None:
            out = self.item_table.index_select(0, item.reshape(-1))
        if self.query_table is not None:
            rows = self.query_table.index_select(0, query.reshape(-1))
            out = rows if out is None else out.add_(rows)
        return out.reshape(*item.shape, -1)

    def pair_vectors(self, item: torch.Tensor, query_emb: torch.Tensor) -> torch.Tensor:
        """Exact pair embeddings of events not in the store: item index (T,) and the query
        encoder's output for each event's query (T, D) -> (T, D), the x of the store's
        tables (the item modalities fused and weighted, the query weighted by alpha)."""
        if self.alpha is None or self.item_table is None:
            raise ArtifactError("pair_vectors needs the model's alpha and an item table")
        rows = self.item_table.index_select(0, item.to(self.device).long())
        return rows + self.alpha * query_emb.float().to(self.device)

    @staticmethod
    def _events_at(
        item: torch.Tensor, query: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Item and query indices of one sequence (item, query (1, L)) at positions (B, H, R)."""
        flat = pos.reshape(-1)
        at_item = item[0].index_select(0, flat).reshape(pos.shape)
        return at_item, query[0].index_select(0, flat).reshape(pos.shape)

    def event_codes(self, item: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Codes of events from their indices: (B, L) -> (B, L, C) uint8, modality-major."""
        return torch.cat(
            [self.table_codes[m][query if m == QUERY_MODALITY else item] for m in self.modalities],
            dim=-1,
        )

    def query_vectors(self, x_t: torch.Tensor) -> torch.Tensor:
        """u = model.gsu_query_vectors(x_t) from the saved projection: (B, D) -> (B, H, D)."""
        if self.gsu_weight is None:
            raise RuntimeError(
                "this retriever has no GSU projection weights (built without a model)"
            )
        d, h, _ = self.gsu_weight.shape
        # (B, D) @ (D, H*D) -> (B, H*D) -> (B, H, D): one small GEMM
        u = (x_t.float().to(self.device) @ self.gsu_weight.reshape(d, h * d)).reshape(-1, h, d)
        return u if self.gsu_bias is None else u + self.gsu_bias

    def rotated(self, u: torch.Tensor) -> torch.Tensor:
        """u (..., D) -> R u, the query the ADC scores against the (rotated) centroids."""
        return u if self.rotation is None else u.float() @ self.rotation.T

    def adc_scores(self, u: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """ADC scores (B, H, L) ~ <u, x_l> with this retriever's torch/triton backend."""
        return self._adc(self.rotated(u), codes)

    def _adc(self, u: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        if self.backend == ScoringBackend.TORCH_LUT:
            return adc_scores_lut(build_luts(u, self.centroids), codes)
        if self.backend == ScoringBackend.TRITON:
            from seminar.pq.triton_kernel import adc_scores_triton

            return adc_scores_triton(u, codes, self.centroids)
        return adc_scores_decode(u, codes, self.centroids)

    def _adc_blocks(self, u: torch.Tensor, blocks: torch.Tensor, n_events: int) -> torch.Tensor:
        """ADC scores (B, H, n_events) of one sequence's fast-scan blocks on the device; the
        Triton kernel reads them in place."""
        if self.backend == ScoringBackend.TRITON:
            from seminar.pq.triton_kernel import adc_scores_triton

            scores = adc_scores_triton(u, blocks.unsqueeze(0), self.centroids, packed=True)
            return scores[..., :n_events]
        return self._adc(u, unpack_fastscan(blocks, n_events).unsqueeze(0))

    # -- the shared core -----------------------------------------------------------------------

    def topk_positions(
        self,
        u: torch.Tensor,
        codes: torch.Tensor | None,
        mask: torch.Tensor,
        item: torch.Tensor,
        query: torch.Tensor,
        k: int,
        blocks: np.ndarray | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head top-K events by PQ score (then exact rerank of a shortlist if configured).

        u (B, H, D); codes (B|1, L, C); mask, item, query (B|1, L) -> positions (B, H, K) int64,
        valid (B, H, K) bool. Masked events are never selected. `blocks`: one stored sequence
        in fast-scan layout, searched in place of `codes` (no padding): a host array for the
        faiss backend, a GPU tensor for the triton one.
        """
        short = k * self.config.rerank
        n_events = item.shape[-1]
        if self.config.rerank > 1 and 0 < n_events <= short:
            # The shortlist would hold every event: skip the ADC and rerank them all, which is
            # the exact GSU (the common case for short histories, and cheaper than the scan).
            b, h = u.shape[:2]
            pos = torch.arange(n_events, device=u.device).expand(b, h, n_events)
            valid = mask.to(u.device).bool().unsqueeze(1).expand(b, h, n_events)
            return self._rerank(u, pos, valid, item, query, k)
        u_pq = self.rotated(u)
        # On a GPU the scores are written out and torch picks the top-K: on an H200 that was
        # 2 to 3 times faster than the fused Triton top-K kernel at every length measured
        # (reports/gpu.md), which stays a benchmarked alternative (seminar.pq.triton_kernel).
        if self._fused is not None:  # the CPU kernel: shortlist, rerank and winners in one call
            return self._fused_topk(u, u_pq, codes, mask, item, query, k, blocks)
        elif isinstance(blocks, torch.Tensor):  # a resident 4-bit store's blocks on the device
            pos, valid = masked_topk(self._adc_blocks(u_pq, blocks, n_events), mask, short)
        elif blocks is not None:
            pos, valid = self._faiss_stored_topk(u_pq, blocks, n_events, short)
        elif self.backend == ScoringBackend.FAISS:
            pos, valid = self._faiss_topk(u_pq, codes, mask, short)
        else:
            pos, valid = masked_topk(self._adc(u_pq, codes), mask, short)
        if self.config.rerank == 1:
            return pos, valid
        return self._rerank(u, pos, valid, item, query, k)

    def _faiss_stored_topk(
        self, u: torch.Tensor, blocks: np.ndarray, n_events: int, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, h, dim = u.shape
        queries = u.detach().cpu().reshape(-1, dim).numpy()
        _, found = self._faiss.search_blocks(queries, blocks, n_events, k)
        found = torch.from_numpy(found).reshape(b, h, k)  # -1 = fewer than K events
        return found.clamp(min=0), found >= 0

    def _fused_topk(
        self,
        u: torch.Tensor,
        u_pq: torch.Tensor,
        codes: torch.Tensor | None,
        mask: torch.Tensor,
        item: torch.Tensor,
        query: torch.Tensor,
        k: int,
        blocks: np.ndarray | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """topk_positions with the fused kernel (CPU): the shortlist of `rerank * k` by ADC and
        its exact rerank in one call per sequence. A stored user's `blocks` are searched as
        stored; an offline row's real events are packed the same way, so both pick alike."""
        b, h, _ = u.shape
        pos = torch.zeros((b, h, k), dtype=torch.long)
        valid = torch.zeros((b, h, k), dtype=torch.bool)
        rows = item.shape[0]
        for r in range(rows):
            targets = slice(None) if rows == 1 else slice(r, r + 1)  # as in _faiss_topk
            items, queries, real = item[r], query[r], None
            if blocks is None:
                row_mask = mask[r].cpu().numpy().astype(bool)
                row_codes = codes[r].cpu().numpy()
                if not row_mask.all():
                    real = np.flatnonzero(row_mask)
                    row_codes = row_codes[real]
                    items, queries = items[real], queries[real]
                seq_blocks = pack_fastscan(row_codes)
            else:
                seq_blocks = blocks
            if len(items) == 0:
                continue  # nothing to select: every slot stays invalid
            found = self._fused_search(u[targets], u_pq[targets], seq_blocks, items, queries, k)
            found = found.reranked
            found = torch.from_numpy(found).reshape(-1, h, k)  # -1 = fewer than k events
            ok = found >= 0
            found = found.clamp(min=0)
            pos[targets] = found if real is None else torch.from_numpy(real)[found]
            valid[targets] = ok
        return pos.to(self.device), valid.to(self.device)

    def _fused_search(
        self,
        u: torch.Tensor,
        u_pq: torch.Tensor,
        blocks: np.ndarray,
        item: torch.Tensor,
        query: torch.Tensor,
        k: int,
        embeddings: bool = False,
    ) -> ScanResult:
        """One kernel call over one sequence (item, query (L,), its fast-scan blocks) for the
        queries u (B, H, D) (u_pq rotated): the `rerank * k` shortlist by ADC, reranked to the
        best k by exact score against the tables (seminar.pq.fused_scan.ScanResult)."""
        from seminar.pq.fused_scan import ExactRerank

        dim = u.shape[-1]
        rerank = ExactRerank(
            u=u.detach().cpu().reshape(-1, dim).numpy(),
            item_index=item.cpu().numpy(),
            query_index=None if self.query_table is None else query.cpu().numpy(),
            item_table=self.item_table.numpy(),
            query_table=None if self.query_table is None else self.query_table.numpy(),
            k=k,
            embeddings=embeddings,
        )
        queries = u_pq.detach().cpu().reshape(-1, dim).numpy()
        return self._fused.search_blocks(
            queries, blocks, len(item), k * self.config.rerank, rerank=rerank, heads=u.shape[-2]
        )

    def _faiss_topk(
        self, u: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, h, dim = u.shape
        pos = torch.zeros((b, h, k), dtype=torch.long)
        valid = torch.zeros((b, h, k), dtype=torch.bool)
        u_np = u.detach().cpu().numpy()
        codes_np = codes.cpu().numpy()
        mask_np = mask.cpu().numpy()
        rows = range(codes_np.shape[0])
        for r in rows:
            # one user's sequence for all targets, or one sequence per target row
            targets = slice(None) if codes_np.shape[0] == 1 else slice(r, r + 1)
            uq = u_np[targets].reshape(-1, dim)  # (B'*H, D)
            if mask_np[r].all():  # a stored sequence: no padding, positions are faiss ids
                _, found = self._faiss.search(uq, codes_np[r], k)  # (B'*H, K), -1 = none
                found = found.reshape(-1, h, k)
                ok = found >= 0
                pos[targets] = torch.from_numpy(np.maximum(found, 0))
            else:
                real = np.flatnonzero(mask_np[r])  # positions of the real events
                if len(real) == 0:
                    continue  # nothing to select: every slot stays invalid
                _, found = self._faiss.search(uq, codes_np[r, real], k)
                found = found.reshape(-1, h, k)
                ok = found >= 0
                pos[targets] = torch.from_numpy(real[np.maximum(found, 0)])
            valid[targets] = torch.from_numpy(ok)
        return pos.to(self.device), valid.to(self.device)

    def _shortlist_scores(
        self, u: torch.Tensor, item: torch.Tensor, query: torch.Tensor
    ) -> torch.Tensor:
        """Exact scores <u[b, h], x(item[b, h, r], query[b, h, r])> -> (B, H, R).

        On the CPU faiss computes them straight from the tables by index, without writing the
        (B, H, R, D) vectors out; elsewhere a batched gather + dot."""
        b, h, r = item.shape
        if self.device.type != "cpu":
            x = self.exact_vectors(item, query)  # (B, H, R, D)
            return torch.einsum("bhd,bhrd->bhr", u, x)
        from faiss import fvec_inner_products_by_idx, swig_ptr

        uq = np.ascontiguousarray(u.reshape(b * h, -1).numpy(), dtype=np.float32)
        total = np.zeros((b * h, r), np.float32)
        part = np.empty((b * h, r), np.float32)
        for table, rows in ((self.item_table, item), (self.query_table, query)):
            if table is None:
                continue
            ids = np.ascontiguousarray(rows.reshape(b * h, r).numpy(), dtype=np.int64)
            tab = table.numpy()
            fvec_inner_products_by_idx(
                swig_ptr(part), swig_ptr(uq), swig_ptr(tab), swig_ptr(ids), uq.shape[1], b * h, r
            )
            total += part
        return torch.from_numpy(total).reshape(b, h, r)

    def _rerank(self, u, pos, valid, item, query, k):
        """Exact scores of the shortlist (B, H, R) -> the best K of it."""
        b, h, r = pos.shape
        if item.shape[-1] == 0:  # an empty sequence: nothing was shortlisted
            return pos[:, :, :k], valid[:, :, :k]
        if item.shape[0] == 1:
            # One user's sequence for every target: score each (target, head)'s shortlist by
            # index into the tables (no (B, H, R, D) tensor on the CPU).
            exact = self._shortlist_scores(u, *self._events_at(item, query, pos))  # (B, H, R)
        else:
            # One sequence per row (offline evaluation): exact vectors of every event of the
            # row (B, L, D) cost less than one per shortlisted (row, head, slot).
            x = self.exact_vectors(item, query)  # (B, L, D)
            exact = torch.gather(torch.einsum("bhd,bld->bhl", u, x), 2, pos)  # (B, H, R)
        exact = exact.masked_fill(~valid, torch.finfo(exact.dtype).min)
        kk = min(k, r)
        _, top = exact.topk(kk, dim=-1)  # (B, H, kk) into the shortlist
        out_pos = torch.zeros((b, h, k), dtype=torch.long, device=pos.device)
        out_valid = torch.zeros((b, h, k), dtype=torch.bool, device=pos.device)
        out_pos[:, :, :kk] = torch.gather(pos, 2, top)
        out_valid[:, :, :kk] = torch.gather(valid, 2, top)
        return out_pos, out_valid

    # -- offline: the Retriever protocol (docs/design.md section 4) -----------------------------

    def select(
        self,
        u: torch.Tensor,
        x_seq: torch.Tensor,
        seq_item: torch.Tensor,
        seq_query: torch.Tensor,
        seq_mask: torch.Tensor,
        k: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (B, H, K) into each row's history and their validity; x_seq is unused
        (PQ scores the codes of seq_item / seq_query)."""
        del x_seq
        dev = self.device
        item, query, mask = seq_item.to(dev), seq_query.to(dev), seq_mask.to(dev).bool()
        codes = self.event_codes(item, query)  # (B, L, C)
        pos, valid = self.topk_positions(u.float().to(dev), codes, mask, item, query, k)
        return pos.to(u.device), valid.to(u.device)

    # -- serving: one user's stored lifelong sequence ------------------------------------------

    def user_sequence(
        self, user_index: int, with_codes: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, np.ndarray | torch.Tensor | None]:
        """(item (1, L), query (1, L), codes (1, L, C), blocks) of a stored user on this device;
        user_index -1 (unknown user) -> an empty sequence. With the faiss backend over a 4-bit
        store, `blocks` are the user's fast-scan blocks and codes are not unpacked (None); on a
        GPU they are slices of the resident store (`DeviceStore`), blocks for any 4-bit one."""
        if self.store is None:
            raise RuntimeError("this retriever has no sequence store (built for offline use only)")
        if self.device_store is not None and user_index != -1:
            return self._resident_sequence(user_index, with_codes)
        blocks = None
        if user_index == -1:
            item = np.zeros(0, np.int32)
            query = np.zeros(0, np.int32)
            codes = np.zeros((0, self.codebooks.code_size), np.uint8)
        elif self.backend == ScoringBackend.FAISS and self.store.fastscan and not with_codes:
            sl = self.store.user_slice(user_index)
            item, query, codes = self.store.item[sl], self.store.query[sl], None
            blocks = self.store.user_blocks(user_index)
        else:
            item, query, codes = self.store.user(user_index)

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).unsqueeze(0).to(self.device)

        return t(item).long(), t(query).long(), None if codes is None else t(codes), blocks

    def _resident_sequence(
        self, user_index: int, with_codes: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """user_sequence from the GPU-resident store: views, nothing crosses the bus."""
        sl = self.store.user_slice(user_index)
        item = self.device_store.item[sl].unsqueeze(0)
        query = self.device_store.query[sl].unsqueeze(0)
        if not self.store.fastscan:
            return item, query, self.device_store.codes[sl].unsqueeze(0), None
        lo, hi = self.store.block_offsets[user_index], self.store.block_offsets[user_index + 1]
        blocks = self.device_store.codes[int(lo) : int(hi)]
        if with_codes:
            return item, query, unpack_fastscan(blocks, sl.stop - sl.start).unsqueeze(0), blocks
        return item, query, None, blocks

    def gather_winners(
        self, item: torch.Tensor, query: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """Exact embeddings (B, H, K, D) of the chosen events of one sequence (item, query
        (1, L)) at positions (B, H, K); zero where not valid."""
        b, h, k = pos.shape
        if item.shape[1] == 0:
            return torch.zeros((b, h, k, self.codebooks.dim), device=self.device)
        emb = self.exact_vectors(*self._events_at(item, query, pos))  # (B, H, K, D)
        if not bool(valid.all()):
            emb.masked_fill_(~valid.unsqueeze(-1), 0.0)
        return emb

    def retrieve_positions(
        self, user_index: int, x_t: torch.Tensor, k: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The GSU of one stored user for B targets: item, query (1, L) of the user's sequence
        and the chosen positions (B, H, K) with their validity."""
        return self._positions(user_index, self._target_vectors(x_t), self.k if k is None else k)

    def _target_vectors(self, x_t: torch.Tensor) -> torch.Tensor:
        """GSU query vectors (B, H, D) of the serving targets x_t (B, D), checked."""
        if x_t.ndim != 2 or x_t.shape[1] != self.codebooks.dim:
            raise ValueError(f"x_t must be (B, {self.codebooks.dim}), got {tuple(x_t.shape)}")
        return self.query_vectors(x_t)

    def _positions(
        self, user_index: int, u: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """retrieve_positions for GSU query vectors u (B, H, D) already computed."""
        item, query, codes, blocks = self.user_sequence(user_index, with_codes=False)
        mask = torch.ones(item.shape, dtype=torch.bool, device=self.device)  # (1, L)
        pos, valid = self.topk_positions(u, codes, mask, item, query, k, blocks=blocks)
        return item, query, pos, valid

    def retrieve(
        self,
        user_index: int,
        x_t: torch.Tensor,
        k: int | None = None,
        tail: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-K exact pair embeddings of one user's stored sequence for B targets.

        x_t (B, D) target pair embeddings -> topk_emb (B, H, K, D) float32 (zero where masked),
        topk_mask (B, H, K) bool. An unknown user (-1) or an empty sequence -> all masked.
        `tail` (T, D): exact pair embeddings of events after the stored sequence (the user's
        online tail), competing with the stored events for the K slots of every head.
        """
        k = self.k if k is None else k
        u = self._target_vectors(x_t)  # (B, H, D): scores the store and the tail alike
        fused = self._fused_retrieve(user_index, u, k)
        if fused is None:
            item, query, pos, valid = self._positions(user_index, u, k)
            emb = self.gather_winners(item, query, pos, valid)
        else:
            emb, valid = fused
        if tail is None or tail.shape[0] == 0:
            return emb, valid
        return self.merge_tail(u, emb, valid, tail.float().to(self.device), k)

    def _fused_retrieve(
        self, user_index: int, u: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """retrieve's stored part in one kernel call (scan, shortlist, rerank and the gather of
        the winners' exact vectors), the same events as topk_positions + gather_winners; None
        where the kernel does not apply (no kernel, an unknown user, a history no longer than
        the shortlist: those take the general path)."""
        if self._fused is None or user_index == -1:
            return None
        item, query, _, blocks = self.user_sequence(user_index, with_codes=False)
        if blocks is None or item.shape[1] <= k * self.config.rerank:
            return None
        b, h, dim = u.shape
        found = self._fused_search(u, self.rotated(u), blocks, item[0], query[0], k, True)
        valid = torch.from_numpy(found.reranked >= 0).reshape(b, h, k)
        return torch.from_numpy(found.embeddings).reshape(b, h, k, dim), valid

    @staticmethod
    def merge_tail(
        u: torch.Tensor, emb: torch.Tensor, valid: torch.Tensor, tail: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The best K per head of the stored winners (emb (B, H, K, D), valid) and the tail
        events (T, D), by exact score <u, x>: the exact top-K over stored + tail whenever the
        stored winners are the exact top-K of the stored events (the exact and reranked paths).
        """
        b, h, _, d = emb.shape
        stored_scores = torch.einsum("bhd,bhkd->bhk", u, emb)  # (B, H, K)
        stored_scores = stored_scores.masked_fill(~valid, torch.finfo(stored_scores.dtype).min)
        tail_scores = torch.einsum("bhd,td->bht", u, tail)  # (B, H, T)
        best = torch.cat([stored_scores, tail_scores], dim=-1).topk(k, dim=-1).indices  # (B, H, K)
        from_tail = best >= k
        stored_at = best.clamp(max=k - 1)
        picked = torch.gather(emb, 2, stored_at.unsqueeze(-1).expand(b, h, k, d))
        tail_rows = tail.index_select(0, (best - k).clamp(min=0).reshape(-1)).reshape(b, h, k, d)
        out_emb = torch.where(from_tail.unsqueeze(-1), tail_rows, picked)
        out_valid = from_tail | torch.gather(valid, 2, stored_at)
        return out_emb, out_valid
