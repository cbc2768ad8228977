"""How a document becomes the tokens of a row: opened and closed by its tokenizer's markers, each once.

A new model's tokenizer encodes plain text and the row gets ``[BOS] doc [EOS]``. A model's own HF
tokenizer may place markers itself (BERT's ``[CLS] doc [SEP]``, Llama's ``<s> doc``), may have no
[BOS] (BERT), or may use one token for both (GPT-2's ``<|endoftext|>``); each of those is framed as
that model was trained, with no marker doubled and none it lacks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from xlm.data.tokenizers import Tokenizer, optional_token_id

__all__ = ["DocumentFrame"]


@dataclass(frozen=True)
class DocumentFrame:
    """The ids that open and close a document: [BOS] and [EOS], else [CLS] and [SEP]; None where the tokenizer
    has neither."""

    start: int | None
    end: int | None

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> DocumentFrame:
        start = optional_token_id(tokenizer, "bos")
        end = optional_token_id(tokenizer, "eos")
        return cls(start=optional_token_id(tokenizer, "cls") if start is None else start,
                   end=optional_token_id(tokenizer, "sep") if end is None else end)

    @property
    def head(self) -> list[int]:
        return [] if self.start is None else [self.start]

    @property
    def tail(self) -> list[int]:
        return [] if self.end is None else [self.end]

    def body(self, ids: Sequence[int]) -> list[int]:
        """The document without the markers its tokenizer placed itself."""
        lo = 1 if self.start is not None and ids[:1] == [self.start] else 0
        hi = len(ids) - 1 if self.end is not None and len(ids) > lo and ids[-1] == self.end else len(ids)
        return list(ids[lo:hi])

    def packed(self, ids: Sequence[int]) -> list[int]:
        """The document's share of a packed stream: start, body, end; where start is end (GPT-2's
        <|endoftext|>), the one marker between documents that GPT-2 was trained with."""
        return [*self.head, *self.body(ids), *([] if self.end == self.start else self.tail)]

    def row(self, ids: Sequence[int], block_size: int) -> list[int]:
        """The document as a row of its own, its body cut to fit between the markers."""
        return [*self.head, *self.body(ids)[: block_size - len(self.head) - len(self.tail)], *self.tail]
