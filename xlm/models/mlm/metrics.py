"""From filled sequences to what the task scores: the block's tokens up to the first [EOS]."""

from __future__ import annotations

from jaxtyping import Int
from torch import Tensor

from xlm.data.metrics import strip_special
from xlm.data.tokenizers import Tokenizer


def block_ids(block: list[int], tokenizer: Tokenizer) -> list[int]:
    """The generated tokens of one block: cut at the first [EOS] (the [PAD] fill after it is not
    output), special tokens dropped."""
    eos = tokenizer.eos_token_id
    if eos in block:
        block = block[: block.index(eos)]
    return strip_special(block, tokenizer.special_ids)


def block_predictions(sequences: Int[Tensor, "batch seq"], block_start: int,
                      tokenizer: Tokenizer) -> tuple[list[list[int]], list[str]]:
    """Per row: the block's ids (see `block_ids`) and their decoded text."""
    ids = [block_ids(row, tokenizer) for row in sequences[:, block_start:].tolist()]
    return ids, [tokenizer.decode(row) for row in ids]
