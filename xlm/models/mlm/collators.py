"""Examples -> MLM batches.

Seq2seq layout (training and prediction alike, so training matches inference)::

    [PAD]... prompt [BOS] | block of `block_size` positions
                          | training: target [EOS] [PAD]...   (cut to block_size if longer)
                          | prediction: [MASK] * block_size

Prompts are left-padded so the block starts in the same column in every row. The prompt and
[BOS] are never masked. The block always has `block_size` (= `sampler.max_new_tokens`) positions:
the [PAD]s after [EOS] are real block content — attended to, maskable and in the loss — because
the sampler fills the same block and has to produce them. A target longer than the block loses
its tail (and its [EOS]) exactly as a generation of that size would. Only the prompt's left
padding is hidden from attention.

LM rows (`input_ids`) are masked anywhere over their real tokens (unconditional training);
right padding is hidden and never masked.

Masking: each row draws t ~ U(0, 1) and masks each maskable position with probability t; a
row left with no masked position gets one, chosen uniformly, so no row is wasted. The unit may ask
for rows masked whole (t = 1) with some probability (`whole_prob`, a curriculum), and for a token's repeats
to be masked together (`mask_repeats`); both are `xlm.nn.loss_shaping`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from xlm.data.collate import OR_MAX_NEW_TOKENS, check_block_fits, check_fits, pad_rows
from xlm.data.tokenizers import Tokenizer
from xlm.nn.loss_shaping import tie_repeats

from .types import MlmPredictBatch, MlmTrainBatch


def sample_mask(maskable: Bool[Tensor, "batch seq"], *, generator: torch.Generator | None = None,
                whole_prob: float = 0.0, repeats_of: Int[Tensor, "batch seq"] | None = None,
                ) -> tuple[Bool[Tensor, "batch seq"], Float[Tensor, " batch"]]:
    """Per-row rate t ~ U(0, 1), each maskable position masked with probability t, and at least
    one masked position in every row that has a maskable one. With `whole_prob` > 0 each row is
    first given t = 1 (all maskable positions masked) with that probability (the curriculum of
    `xlm.nn.loss_shaping`); at 0 no extra number is drawn. Given `repeats_of` (the rows' tokens), a token's
    repeats are masked together, the one position given to an empty row included."""
    batch, seq = maskable.shape
    t = torch.rand(batch, generator=generator)
    if whole_prob > 0.0:
        t = torch.where(torch.rand(batch, generator=generator) < whole_prob, 1.0, t)
    draws = torch.rand(batch, seq, generator=generator)
    if repeats_of is not None:
        draws = tie_repeats(draws, repeats_of, maskable)
    masked = (draws < t[:, None]) & maskable
    pick = torch.rand(batch, seq, generator=generator).masked_fill(~maskable, -1.0).argmax(dim=1)
    empty = ~masked.any(dim=1) & maskable.any(dim=1)
    masked[empty, pick[empty]] = True
    if repeats_of is not None:
        picked = repeats_of.gather(1, pick[:, None])
        masked |= empty[:, None] & maskable & (repeats_of == picked)
    return masked, t


def _masked_batch(target_ids: Tensor, attention_mask: Tensor, maskable: Tensor, mask_id: int,
                  generator: torch.Generator | None, whole_prob: float = 0.0, mask_repeats: bool = False,
                  ) -> MlmTrainBatch:
    masked, t = sample_mask(maskable, generator=generator, whole_prob=whole_prob,
                            repeats_of=target_ids if mask_repeats else None)
    return {"input_ids": target_ids.masked_fill(masked, mask_id), "attention_mask": attention_mask,
            "target_ids": target_ids, "maskable": maskable, "masked": masked, "t": t}


def _prompt_columns(examples: Sequence[Mapping[str, Any]], tokenizer: Tokenizer) -> tuple[Tensor, Tensor]:
    """Left-padded `prompt + [BOS]` ids and their attention mask."""
    rows = [list(ex["prompt_ids"]) + [tokenizer.bos_token_id] for ex in examples]
    return pad_rows(rows, tokenizer.pad_token_id, side="left")


class MlmSeq2SeqCollator:
    """`prompt_ids` -> `target_ids` training rows: prompt + [BOS] + a masked block of `block_size`."""

    def __init__(self, tokenizer: Tokenizer, *, block_size: int, max_len: int) -> None:
        if block_size < 1:
            raise ValueError(f"block_size (sampler.max_new_tokens) must be >= 1, got {block_size}")
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.max_len = max_len

    def block(self, target_ids: Sequence[int]) -> list[int]:
        """target + [EOS] + [PAD] fill to the block size."""
        tok = self.tokenizer
        return list(target_ids) + [tok.eos_token_id] + [tok.pad_token_id] * (self.block_size - len(target_ids) - 1)

    def __call__(self, examples: Sequence[Mapping[str, Any]], *,
                 generator: torch.Generator | None = None, whole_prob: float = 0.0,
                 mask_repeats: bool = False) -> MlmTrainBatch:
        target_ids, attention_mask, maskable = self.clean_rows(examples)
        return _masked_batch(target_ids, attention_mask, maskable, self.tokenizer.mask_token_id, generator,
                             whole_prob, mask_repeats)

    def clean_rows(self, examples: Sequence[Mapping[str, Any]]) -> tuple[Tensor, Tensor, Tensor]:
        """The unmasked rows, their attention mask and the maskable block (drawing no randomness)."""
        prompt_ids, prompt_mask = _prompt_columns(examples, self.tokenizer)
        check_fits(prompt_ids.size(1) + self.block_size, self.max_len, "a prompt + [BOS] + block row",
                   also=OR_MAX_NEW_TOKENS)
        longest = max(len(ex["target_ids"]) for ex in examples)
        check_block_fits(longest, self.block_size)  # the longest: one rerun fixes all
        blocks = torch.tensor([self.block(ex["target_ids"]) for ex in examples], dtype=torch.long)
        target_ids = torch.cat([prompt_ids, blocks], dim=1)
        attention_mask = torch.cat([prompt_mask, torch.ones_like(blocks, dtype=torch.bool)], dim=1)
        maskable = torch.zeros_like(attention_mask)
        maskable[:, prompt_ids.size(1):] = True
        return target_ids, attention_mask, maskable


class MlmLMCollator:
    """Unconditional masking of `input_ids` rows (already blocked, or right-padded here)."""

    def __init__(self, tokenizer: Tokenizer, *, max_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_len = max_len

    def __call__(self, examples: Sequence[Mapping[str, Any]], *,
                 generator: torch.Generator | None = None, whole_prob: float = 0.0,
                 mask_repeats: bool = False) -> MlmTrainBatch:
        rows = [list(ex["input_ids"]) for ex in examples]
        for row in rows:
            check_fits(len(row), self.max_len, "an input row", also=OR_MAX_NEW_TOKENS)
        target_ids, attention_mask = pad_rows(rows, self.tokenizer.pad_token_id)
        return _masked_batch(target_ids, attention_mask, attention_mask.clone(), self.tokenizer.mask_token_id,
                             generator, whole_prob, mask_repeats)


class MlmPredictCollator:
    """Rows whose block is all [MASK]: prompt + [BOS] + block (seq2seq), or the block alone when
    the examples have no `prompt_ids` (unconditional generation)."""

    def __init__(self, tokenizer: Tokenizer, *, block_size: int, max_len: int) -> None:
        if block_size < 1:
            raise ValueError(f"block_size (sampler.max_new_tokens) must be >= 1, got {block_size}")
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.max_len = max_len

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> MlmPredictBatch:
        with_prompt = ["prompt_ids" in ex for ex in examples]
        if any(with_prompt) and not all(with_prompt):
            raise ValueError("a prediction batch mixes rows with and without prompt_ids; "
                             "give every row a prompt (seq2seq) or none (unconditional)")
        blocks = torch.full((len(examples), self.block_size), self.tokenizer.mask_token_id, dtype=torch.long)
        targets = [list(ex.get("target_ids", [])) for ex in examples]
        if not all(with_prompt):
            check_fits(self.block_size, self.max_len, "a block", also=OR_MAX_NEW_TOKENS)
            return {"input_ids": blocks, "attention_mask": torch.ones_like(blocks, dtype=torch.bool),
                    "block_start": 0, "target_ids": targets}
        prompt_ids, prompt_mask = _prompt_columns(examples, self.tokenizer)
        check_fits(prompt_ids.size(1) + self.block_size, self.max_len, "a prompt + [BOS] + block row",
                   also=OR_MAX_NEW_TOKENS)
        return {"input_ids": torch.cat([prompt_ids, blocks], dim=1),
                "attention_mask": torch.cat([prompt_mask, torch.ones_like(blocks, dtype=torch.bool)], dim=1),
                "block_start": prompt_ids.size(1), "target_ids": targets}
