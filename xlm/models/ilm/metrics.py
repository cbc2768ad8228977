"""From the sampler's out-of-order rows to what the task scores: tokens in sequence order."""

from __future__ import annotations

from jaxtyping import Bool, Int
from torch import Tensor

from xlm.data.metrics import strip_special
from xlm.data.tokenizers import Tokenizer


def ordered_rows(tokens: Int[Tensor, "batch seq"], positions: Int[Tensor, "batch seq"],
                 keep: Bool[Tensor, "batch seq"]) -> list[list[int]]:
    """Per row, the tokens of the columns where `keep` is True, sorted by position."""
    out = []
    for row_tokens, row_pos, row_keep in zip(tokens.tolist(), positions.tolist(), keep.tolist()):
        pairs = sorted((p, t) for t, p, k in zip(row_tokens, row_pos, row_keep) if k)
        out.append([t for _, t in pairs])
    return out


def insertion_predictions(tokens: Int[Tensor, "batch seq"], positions: Int[Tensor, "batch seq"],
                          inserted: Bool[Tensor, "batch seq"],
                          tokenizer: Tokenizer) -> tuple[list[list[int]], list[str]]:
    """Per row: the inserted tokens in sequence order, special tokens dropped, and their text."""
    ids = [strip_special(row, tokenizer.special_ids) for row in ordered_rows(tokens, positions, inserted)]
    return ids, [tokenizer.decode(row) for row in ids]
