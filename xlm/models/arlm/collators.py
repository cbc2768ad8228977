"""Examples -> ARLM batches.

Seq2seq rows are `prompt + [BOS] + target + [EOS]`; the loss covers the target and the
closing [EOS] (without it the model never learns to stop), never the prompt. Prediction gives
the prompt in the layout the sampler's `prompt_format` names: `prompt + [BOS]` (seq2seq), or
the prompt alone (continuation, as a language model such as GPT-2 is prompted).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from xlm.data.collate import check_fits, pad_rows
from xlm.data.tokenizers import Tokenizer, padding_id
from xlm.errors import InvalidValueError

from .types import ArlmPredictBatch, ArlmTrainBatch

IGNORE_INDEX = -100


class ArlmLMCollator:
    """Plain language modelling on `input_ids` rows (already blocked, or padded here)."""

    def __init__(self, tokenizer: Tokenizer, max_len: int) -> None:
        self.pad_id = padding_id(tokenizer)  # labels follow the mask, never the id
        self.max_len = max_len

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> ArlmTrainBatch:
        rows = [list(ex["input_ids"]) for ex in examples]
        for row in rows:
            check_fits(len(row), self.max_len, "an input row")
        input_ids, mask = pad_rows(rows, self.pad_id)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        labels[:, :-1] = torch.where(mask[:, 1:], input_ids[:, 1:], IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


class ArlmSeq2SeqCollator:
    """Teacher-forced training on `prompt_ids` -> `target_ids`."""

    def __init__(self, tokenizer: Tokenizer, max_len: int) -> None:
        self.pad_id = tokenizer.pad_token_id
        self.bos_id = tokenizer.bos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.max_len = max_len

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> ArlmTrainBatch:
        rows, starts = [], []
        for ex in examples:
            prefix = list(ex["prompt_ids"]) + [self.bos_id]
            row = prefix + list(ex["target_ids"]) + [self.eos_id]
            check_fits(len(row), self.max_len, "a prompt + target row")
            rows.append(row)
            starts.append(len(prefix))
        input_ids, mask = pad_rows(rows, self.pad_id)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for i, (row, start) in enumerate(zip(rows, starts)):
            # position p predicts token p+1: the first target token is predicted at [BOS]
            labels[i, start - 1 : len(row) - 1] = input_ids[i, start : len(row)]
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


class ArlmContinuationPredictCollator:
    """Left-padded prompts as they are, so every row's next token is in the last column: the
    prompt is continued as transformers' generate continues it (padding is masked out)."""

    def __init__(self, tokenizer: Tokenizer, max_len: int) -> None:
        self.pad_id = padding_id(tokenizer)
        self.max_len = max_len

    def row(self, prompt_ids: Sequence[int]) -> list[int]:
        if not prompt_ids:
            raise InvalidValueError("an empty prompt has nothing to continue; give it at least one token "
                                    "(e.g. the tokenizer's bos or eos token)")
        return list(prompt_ids)

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> ArlmPredictBatch:
        rows = [self.row(ex["prompt_ids"]) for ex in examples]
        for row in rows:
            check_fits(len(row), self.max_len, "a prompt")
        input_ids, mask = pad_rows(rows, self.pad_id, side="left")
        targets = [list(ex.get("target_ids", [])) for ex in examples]
        return {"input_ids": input_ids, "attention_mask": mask, "target_ids": targets}


class ArlmSeq2SeqPredictCollator(ArlmContinuationPredictCollator):
    """Left-padded `prompt + [BOS]`: the layout the seq2seq rows were trained on."""

    def __init__(self, tokenizer: Tokenizer, max_len: int) -> None:
        super().__init__(tokenizer, max_len)
        self.bos_id = tokenizer.bos_token_id

    def row(self, prompt_ids: Sequence[int]) -> list[int]:
        return list(prompt_ids) + [self.bos_id]
