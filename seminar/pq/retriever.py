"""PQRetriever: PQ GSU for offline evaluation (Retriever protocol) and for serving (per user).

Both paths call `PQRetriever.topk_positions`, so an offline score and a served score of the
same (user, target) pick the same events. Shape letters as in seminar.pq.adc; U users.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from seminar.pq.adc import adc_scores_decode, adc_scores_lut, build_luts, masked_topk
from seminar.pq.codebooks import QUERY_MODALITY, Codebooks
from seminar.pq.config import PQConfig, ScoringBackend
from seminar.pq.errors import PQError
from seminar.pq.store import SequenceStore


def resolve_backend(backend: ScoringBackend, nbits: int, device: torch.device) -> ScoringBackend:
    """`auto` -> the fastest measured path for this code width and device; refuse impossible ones."""
    if backend == ScoringBackend.AUTO:
        if device.type == "cpu" and nbits == 4:
            return ScoringBackend.FAISS
        return ScoringBackend.TORCH_DECODE
    if backend == ScoringBackend.FAISS and device.type != "cpu":
        raise PQError(f"backend 'faiss' runs on the CPU only, the retriever is on {device}")
    if backend == ScoringBackend.TRITON and device.type != "cuda":
        raise PQError(f"backend 'triton' needs a CUDA GPU, the retriever is on {device}")
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
    ) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise PQError("device 'cuda' was asked for but torch sees no CUDA GPU")
        missing = [m for m in codebooks.modalities if m not in tables or m not in table_codes]
        if missing:
            raise PQError(f"tables/table codes missing for modalities {missing}")
        self.codebooks = codebooks
        self.config = config
        self.k = k
        # the model's pair weight: serving forms x_t = alpha * query_emb + (1 - alpha) * item_emb
        self.alpha = alpha
        self.backend = resolve_backend(config.backend, codebooks.nbits, self.device)
        self.modalities = codebooks.modalities
        self.centroids = torch.from_numpy(codebooks.centroids).to(self.device)
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
            raise PQError(f"store modalities {store.modalities} != codebooks {self.modalities}")
        self.gsu_weight = None if gsu_weight is None else gsu_weight.float().to(self.device)
        self.gsu_bias = None if gsu_bias is None else gsu_bias.float().to(self.device)
        self._faiss = None
        if self.backend == ScoringBackend.FAISS:
            from seminar.pq.faiss_scan import FaissScanner

            self._faiss = FaissScanner(codebooks)

    def with_config(self, config: PQConfig) -> PQRetriever:
        """The same codebooks, tables, store and projection scored with another backend /
        rerank setting (the code width must match the trained codebooks)."""
        if config.nbits != self.codebooks.nbits or config.n_subspaces != self.codebooks.n_subspaces:
            raise PQError(
                f"config asks for {config.n_subspaces} x {config.nbits}-bit codes, the codebooks "
                f"are {self.codebooks.n_subspaces} x {self.codebooks.nbits}-bit"
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
        )

    # -- pieces --------------------------------------------------------------------------------

    def exact_vectors(self, item: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Exact pair embeddings x = tables["query"][q] + sum_m tables[m][i]: (...) -> (..., D)."""
        if self.item_table is None:
            return self.query_table[query]
        if self.query_table is None:
            return self.item_table[item]
        return self.query_table[query] + self.item_table[item]

    def event_codes(self, item: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Codes of events from their indices: (B, L) -> (B, L, C) uint8, modality-major."""
        return torch.cat(
            [self.table_codes[m][query if m == QUERY_MODALITY else item] for m in self.modalities],
            dim=-1,
        )

    def query_vectors(self, x_t: torch.Tensor) -> torch.Tensor:
        """u = model.gsu_query_vectors(x_t) from the saved projection: (B, D) -> (B, H, D)."""
        if self.gsu_weight is None:
            raise PQError("this retriever has no GSU projection weights (built without a model)")
        d, h, _ = self.gsu_weight.shape
        # (B, D) @ (D, H*D) -> (B, H*D) -> (B, H, D): one small GEMM
        u = (x_t.float().to(self.device) @ self.gsu_weight.reshape(d, h * d)).reshape(-1, h, d)
        return u if self.gsu_bias is None else u + self.gsu_bias

    def adc_scores(self, u: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """ADC scores (B, H, L) with this retriever's torch/triton backend."""
        if self.backend == ScoringBackend.TORCH_LUT:
            return adc_scores_lut(build_luts(u, self.centroids), codes)
        if self.backend == ScoringBackend.TRITON:
            from seminar.pq.triton_kernel import adc_scores_triton

            return adc_scores_triton(u, codes, self.centroids)
        return adc_scores_decode(u, codes, self.centroids)

    # -- the shared core -----------------------------------------------------------------------

    def topk_positions(
        self,
        u: torch.Tensor,
        codes: torch.Tensor,
        mask: torch.Tensor,
        item: torch.Tensor,
        query: torch.Tensor,
        k: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head top-K events by PQ score (then exact rerank of a shortlist if configured).

        u (B, H, D); codes (B|1, L, C); mask, item, query (B|1, L) -> positions (B, H, K) int64,
        valid (B, H, K) bool. Masked events are never selected.
        """
        short = k * self.config.rerank
        if self.backend == ScoringBackend.FAISS:
            pos, valid = self._faiss_topk(u, codes, mask, short)
        else:
            pos, valid = masked_topk(self.adc_scores(u, codes), mask, short)
        if self.config.rerank == 1:
            return pos, valid
        return self._rerank(u, pos, valid, item, query, k)

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

    def _rerank(self, u, pos, valid, item, query, k):
        """Exact scores of the shortlist (B, H, R) -> the best K of it."""
        b, h, r = pos.shape
        if item.shape[0] == 1:
            # One user's sequence for every target: compute each shortlisted event's exact
            # vector once (the union is at most L, usually far less than B*H*R), score the
            # union with one GEMM, then pick each row's shortlist scores out of it.
            uniq, inv = torch.unique(pos, return_inverse=True)  # (U,), (B, H, R)
            x = self.exact_vectors(item[0][uniq], query[0][uniq])  # (U, D)
            scores = (u.reshape(b * h, -1) @ x.T).reshape(b, h, -1)  # (B, H, U)
            exact = torch.gather(scores, 2, inv)  # (B, H, R)
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

    def user_sequence(self, user_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(item (1, L), query (1, L), codes (1, L, C)) of a stored user on this device;
        user_index -1 (unknown user) -> an empty sequence."""
        if self.store is None:
            raise PQError("this retriever has no sequence store (built for offline use only)")
        if user_index == -1:
            item = np.zeros(0, np.int32)
            query = np.zeros(0, np.int32)
            codes = np.zeros((0, self.codebooks.code_size), np.uint8)
        else:
            item, query, codes = self.store.user(user_index)

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).unsqueeze(0).to(self.device)

        return t(item).long(), t(query).long(), t(codes)

    def gather_winners(
        self, item: torch.Tensor, query: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """Exact embeddings (B, H, K, D) of the chosen events of one sequence (item, query
        (1, L)) at positions (B, H, K); zero where not valid."""
        b, h, k = pos.shape
        if item.shape[1] == 0:
            return torch.zeros((b, h, k, self.codebooks.dim), device=self.device)
        # Heads and targets pick many of the same events: build each winner's exact vector
        # once, then one gather writes (B, H, K, D).
        uniq, inv = torch.unique(pos, return_inverse=True)  # (U,), (B, H, K)
        x = self.exact_vectors(item[0][uniq], query[0][uniq])  # (U, D)
        emb = x[inv]  # (B, H, K, D)
        emb.masked_fill_(~valid.unsqueeze(-1), 0.0)
        return emb

    def retrieve(
        self, user_index: int, x_t: torch.Tensor, k: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-K exact pair embeddings of one user's stored sequence for B targets.

        x_t (B, D) target pair embeddings -> topk_emb (B, H, K, D) float32 (zero where masked),
        topk_mask (B, H, K) bool. An unknown user (-1) or an empty sequence -> all masked.
        """
        k = self.k if k is None else k
        if x_t.ndim != 2 or x_t.shape[1] != self.codebooks.dim:
            raise PQError(f"x_t must be (B, {self.codebooks.dim}), got {tuple(x_t.shape)}")
        item, query, codes = self.user_sequence(user_index)
        u = self.query_vectors(x_t)  # (B, H, D)
        mask = torch.ones(item.shape, dtype=torch.bool, device=self.device)  # (1, L)
        pos, valid = self.topk_positions(u, codes, mask, item, query, k)
        return self.gather_winners(item, query, pos, valid), valid
