"""Examples -> MDLM batches.

Seq2seq rows are `prompt + [BOS] + block`, prompts left padded so every block sits in the last
`block_size` columns. The block is `target + [EOS] + [PAD]...` filled up to `block_size`, the
size the sampler generates: the model learns to write the [EOS] and the [PAD] tail too, so all
block positions (their [PAD]s included) are real tokens for attention and count in the loss.
Only the left padding of prompts is hidden from attention; the prompt and [BOS] are never
masked. LM rows (`input_ids`) are noised over all their real tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from xlm.data.collate import OR_MAX_NEW_TOKENS, check_block_fits, check_fits, pad_rows
from xlm.data.tokenizers import Tokenizer

from .types import MdlmPredictBatch, MdlmTrainBatch


class MdlmLMCollator:
    """Unconditional training on `input_ids` blocks (right padded to the longest row)."""

    def __init__(self, tokenizer: Tokenizer, max_len: int) -> None:
        self.pad_id = tokenizer.pad_token_id
        self.max_len = max_len

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> MdlmTrainBatch:
        rows = [list(ex["input_ids"]) for ex in examples]
        for row in rows:
            check_fits(len(row), self.max_len, "an input row")
        input_ids, mask = pad_rows(rows, self.pad_id)
        return {"input_ids": input_ids, "attention_mask": mask, "noise_mask": mask.clone()}


class MdlmSeq2SeqCollator:
    """`prompt + [BOS]` fixed, the `block_size` block after it noised."""

    def __init__(self, tokenizer: Tokenizer, max_len: int, block_size: int) -> None:
        self.pad_id = tokenizer.pad_token_id
        self.bos_id = tokenizer.bos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.max_len = max_len
        self.block_size = block_size

    def block(self, target: Sequence[int]) -> list[int]:
        return list(target) + [self.eos_id] + [self.pad_id] * (self.block_size - len(target) - 1)

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> MdlmTrainBatch:
        longest = max(len(ex["target_ids"]) for ex in examples)
        check_block_fits(longest, self.block_size)  # the longest: one rerun fixes all
        rows = [list(ex["prompt_ids"]) + [self.bos_id] + self.block(ex["target_ids"]) for ex in examples]
        for row in rows:
            check_fits(len(row), self.max_len, "a prompt + [BOS] + block row", also=OR_MAX_NEW_TOKENS)
        input_ids, mask = pad_rows(rows, self.pad_id, side="left")
        noise_mask = torch.zeros_like(mask)
        noise_mask[:, -self.block_size:] = True
        return {"input_ids": input_ids, "attention_mask": mask, "noise_mask": noise_mask}


class MdlmSeq2SeqPredictCollator:
    """`prompt + [BOS] + [MASK] * block_size`, the block marked for the sampler to fill."""

    def __init__(self, tokenizer: Tokenizer, max_len: int, block_size: int) -> None:
        self.pad_id = tokenizer.pad_token_id
        self.bos_id = tokenizer.bos_token_id
        self.mask_id = tokenizer.mask_token_id
        self.max_len = max_len
        self.block_size = block_size

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> MdlmPredictBatch:
        rows = [list(ex["prompt_ids"]) + [self.bos_id] + [self.mask_id] * self.block_size for ex in examples]
        for row in rows:
            check_fits(len(row), self.max_len, "a prompt + [BOS] + block row", also=OR_MAX_NEW_TOKENS)
        input_ids, mask = pad_rows(rows, self.pad_id, side="left")
        fill_mask = torch.zeros_like(mask)
        fill_mask[:, -self.block_size:] = True
        targets = [list(ex.get("target_ids", [])) for ex in examples]
        return {"input_ids": input_ids, "attention_mask": mask, "fill_mask": fill_mask, "target_ids": targets}
