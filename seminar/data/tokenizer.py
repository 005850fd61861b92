"""Word-level query tokenizer with a stable vocabulary.

Imported by the Triton `features` backend to tokenise request queries exactly as the training
data was tokenised, so it depends on the standard library only (no numpy, no torch).

Vocabulary (`arrays/tokens.json`): index 0 = `<pad>`, 1 = `<unk>`, then every word seen in the
training queries, sorted, so the same queries always give the same ids.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from seminar.contract import PAD_TOKEN_ID, UNK_TOKEN_ID

PAD: Final = "<pad>"
UNK: Final = "<unk>"
QUERY_TOKENS: Final = 8  # T: tokens per query, right-padded with PAD_TOKEN_ID, longer ones cut

# Unicode word characters; apostrophes and hyphens split words ("sci-fi" -> "sci", "fi").
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lowercased words of `text`, in order."""
    return _WORD.findall(text.lower())


class QueryTokenizer:
    """Maps a query string to `length` token ids (T = 8 by default).

    >>> tok = QueryTokenizer.build(["Dark comedy", "comedy"])
    >>> tok.vocab
    ['<pad>', '<unk>', 'comedy', 'dark']
    >>> tok.encode("Comedy, very dark!")
    [2, 1, 3, 0, 0, 0, 0, 0]
    """

    def __init__(self, vocab: list[str], length: int = QUERY_TOKENS) -> None:
        if len(vocab) < 2 or vocab[PAD_TOKEN_ID] != PAD or vocab[UNK_TOKEN_ID] != UNK:
            raise ValueError(f"vocab must start with {PAD!r}, {UNK!r}")
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.vocab = vocab
        self.length = length
        self._index = {word: i for i, word in enumerate(vocab)}

    @classmethod
    def build(cls, queries: Iterable[str], length: int = QUERY_TOKENS) -> QueryTokenizer:
        """Vocabulary = every word of `queries`, sorted (stable across runs and machines)."""
        seen = {word for query in queries for word in words(query)}
        return cls([PAD, UNK, *sorted(seen)], length)

    @classmethod
    def load(cls, path: str | Path, length: int = QUERY_TOKENS) -> QueryTokenizer:
        """Load `tokens.json` (a JSON list of words) written by `save`."""
        vocab = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(vocab, list) or not all(isinstance(w, str) for w in vocab):
            raise ValueError(f"{path} must hold a JSON list of strings")
        return cls(vocab, length)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.vocab, ensure_ascii=False), encoding="utf-8")

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, exactly `self.length` of them (unknown words -> UNK_TOKEN_ID)."""
        ids = [self._index.get(word, UNK_TOKEN_ID) for word in words(text)[: self.length]]
        return ids + [PAD_TOKEN_ID] * (self.length - len(ids))

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]
