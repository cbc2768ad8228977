"""Padding and the context-length check that the families' collators share."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from xlm.errors import InvalidValueError

SIDES = ("left", "right")
OR_MAX_NEW_TOKENS = " (or sampler.max_new_tokens)"  # for rows that make room for generated tokens


def check_fits(length: int, max_len: int, what: str, *, also: str = "") -> None:
    """A row longer than the model context is an error that says which knob to turn; `also` names
    another one (e.g. `OR_MAX_NEW_TOKENS`). A user error: the data, a prompt or a setting is too long."""
    if length > max_len:
        raise InvalidValueError(f"{what} of {length} tokens exceeds the model context of {max_len}; "
                         f"raise model.max_seq_len or shorten the data{also}")


def check_block_fits(target_len: int, block_size: int) -> None:
    """A seq2seq target and its [EOS] must fit the block a block-filling family generates: a target cut to fit
    would be trained and scored as another one."""
    if target_len + 1 > block_size:
        raise InvalidValueError(f"a target of {target_len} tokens plus [EOS] does not fit the generated block of "
                                f"sampler.max_new_tokens={block_size}; set sampler.max_new_tokens={target_len + 1} "
                                f"or more")


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, *, side: str = "right",
             ) -> tuple[Int[Tensor, "batch width"], Bool[Tensor, "batch width"]]:
    """`rows` padded with `pad_id` to the longest, and the mask of real tokens. Left padding puts
    every row's last token in the last column, where decoding from a prompt continues."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        columns = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, columns] = torch.tensor(row, dtype=torch.long)
        mask[i, columns] = True
    return ids, mask
