"""The query tokenizer: stable vocabulary, fixed length, importable without numpy or torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from seminar.contract import PAD_TOKEN_ID, UNK_TOKEN_ID
from seminar.data.dataset import PreparedDataset
from seminar.data.tokenizer import QUERY_TOKENS, QueryTokenizer


def test_vocabulary_is_sorted_and_order_independent() -> None:
    queries = ["Dark comedy", "sci-fi", "COMEDY classic", ""]
    a = QueryTokenizer.build(queries)
    b = QueryTokenizer.build(list(reversed(queries)))
    assert a.vocab == b.vocab == ["<pad>", "<unk>", "classic", "comedy", "dark", "fi", "sci"]


def test_encode_pads_truncates_and_marks_unknown_words() -> None:
    tok = QueryTokenizer.build(["a b c d e f g h i j"])
    assert len(tok.encode("")) == QUERY_TOKENS and set(tok.encode("")) == {PAD_TOKEN_ID}
    assert tok.encode("A, zzz!") == [tok.vocab.index("a"), UNK_TOKEN_ID, *[PAD_TOKEN_ID] * 6]
    assert tok.encode("a b c d e f g h i j") == list(range(2, 10))  # truncated to T = 8


def test_save_load_round_trip(tmp_path: Path) -> None:
    tok = QueryTokenizer.build(["funny", "Highly quotable"])
    tok.save(tmp_path / "tokens.json")
    again = QueryTokenizer.load(tmp_path / "tokens.json")
    assert again.vocab == tok.vocab
    assert again.encode("highly funny") == tok.encode("highly funny")


def test_prepared_query_tokens_match_the_tokenizer(movielens_data: Path) -> None:
    ds = PreparedDataset.load(movielens_data)
    tok = ds.tokenizer()
    assert ds.query_tokens.shape == (ds.n_queries, QUERY_TOKENS)
    assert np.array_equal(ds.query_tokens, np.array(tok.encode_batch(ds.queries)))
    assert (ds.query_tokens[0] == PAD_TOKEN_ID).all()
    vocab = json.loads((movielens_data / "arrays" / "tokens.json").read_text())
    assert vocab[2:] == sorted(vocab[2:])
    assert tok.encode("funny")[0] == vocab.index("funny")


def test_importable_without_numpy_or_torch() -> None:
    # The Triton `features` backend imports it; keep it standard-library only.
    code = (
        "import sys; from seminar.data.tokenizer import QueryTokenizer; "
        "assert 'numpy' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
