"""From sampled blocks to what is scored: a block's tokens up to its first [EOS], specials dropped."""

from __future__ import annotations

from collections.abc import Sequence

from xlm.data.metrics import strip_special
from xlm.data.tokenizers import Tokenizer


def block_ids(block: Sequence[int], tokenizer: Tokenizer) -> list[int]:
    """The generated answer of one row: everything after the first [EOS] is filler ([PAD]s)."""
    row = [int(i) for i in block]
    if tokenizer.eos_token_id in row:
        row = row[: row.index(tokenizer.eos_token_id)]
    return strip_special(row, tokenizer.special_ids)


def blocks_to_ids_and_text(blocks: Sequence[Sequence[int]], tokenizer: Tokenizer) -> tuple[list[list[int]], list[str]]:
    ids = [block_ids(b, tokenizer) for b in blocks]
    return ids, [tokenizer.decode(r) for r in ids]
