"""Examples -> ARLM batches.

Seq2seq rows are `prompt + [BOS] + target + [EOS]`; the loss covers the target and the
closing [EOS] (without it the model never learns to stop), never the prompt.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from xlm.data.tokenizers import Tokenizer

from .types import ArlmPredictBatch, ArlmTrainBatch

IGNORE_INDEX = -100


def _check_length(length: int, max_len: int, what: str) -> None:
    if length > max_len:
        raise ValueError(f"{what} of {length} tokens exceeds the model context of {max_len}; "
                         f"raise model.max_seq_len or shorten the data")


class ArlmLMCollator:
    """Plain language modelling on `input_ids` rows (already blocked, or padded here)."""

    def __init__(self, tokenizer: Tokenizer, max_len: int) -> None:
        self.pad_id = tokenizer.pad_token_id
        self.max_len = max_len

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> ArlmTrainBatch:
        rows = [list(ex["input_ids"]) for ex in examples]
        for row in rows:
            _check_length(len(row), self.max_len, "an input row")
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
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
            _check_length(len(row), self.max_len, "a prompt + target row")
            rows.append(row)
            starts.append(len(prefix))
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for i, (row, start) in enumerate(zip(rows, starts)):
            ids = torch.tensor(row, dtype=torch.long)
            input_ids[i, : len(row)] = ids
            mask[i, : len(row)] = True
            # position p predicts token p+1: the first target token is predicted at [BOS]
            labels[i, start - 1 : len(row) - 1] = ids[start:]
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


class ArlmSeq2SeqPredictCollator:
    """Left-padded `prompt + [BOS]` so every row's next token is in the last column."""

    def __init__(self, tokenizer: Tokenizer, max_len: int) -> None:
        self.pad_id = tokenizer.pad_token_id
        self.bos_id = tokenizer.bos_token_id
        self.max_len = max_len

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> ArlmPredictBatch:
        rows = [list(ex["prompt_ids"]) + [self.bos_id] for ex in examples]
        for row in rows:
            _check_length(len(row), self.max_len, "a prompt")
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = True
        targets = [list(ex.get("target_ids", [])) for ex in examples]
        return {"input_ids": input_ids, "attention_mask": mask, "target_ids": targets}
