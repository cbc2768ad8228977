"""Examples -> ILM batches.

Layout of every row (training and prediction alike)::

    [CLS] [PAD]... prompt [BOS] | kept target tokens [PAD]...

[CLS] sits in column 0 of every row (the stop head reads it there); the prompts are padded
between [CLS] and the prompt so that [BOS] is in the same column in every row, and the kept
tokens are right-padded. Padding is hidden from attention, and positions count real tokens
only, so a padded row is seen exactly as the unpadded one. LM rows (`input_ids`) have no
prompt: `[CLS] [BOS] kept tokens`; the row's leading [BOS] is the anchor and never dropped,
and a (packed) row that does not start with [BOS] gets one, so training matches unconditional
generation, which starts from `[CLS] [BOS]`.

Dropping (Patel et al. 2025): for a target of L tokens, n ~ U{0, ..., L}, then a uniformly random
subset of n tokens is dropped. Each dropped token is a target at its gap: the column of the kept
token (or [BOS]) right before it. Several dropped tokens can share a gap. Targets are sparse
lists (row, column, token, weight = 1/n of the row); a row with n = 0 has none, and its stop
target is "stop".
"""

from __future__ import annotations

import abc

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from xlm.data.collate import OR_MAX_NEW_TOKENS, check_fits
from xlm.data.tokenizers import Tokenizer

from .types import IlmPredictBatch, IlmTrainBatch


def sample_drops(length: int, *, generator: torch.Generator | None = None) -> list[int]:
    """Indices to drop from a sequence of `length` tokens: n ~ U{0..length}, then n of them uniformly."""
    n = int(torch.randint(length + 1, (1,), generator=generator))
    return sorted(torch.randperm(length, generator=generator)[:n].tolist())


def _prefix(prompts: Sequence[Sequence[int]], tokenizer: Tokenizer) -> tuple[list[list[int]], list[list[bool]]]:
    """`[CLS] [PAD]... prompt [BOS]` per row, all of one width, and their attention masks."""
    width = max((len(p) for p in prompts), default=0)
    ids, mask = [], []
    for prompt in prompts:
        pad = width - len(prompt)
        ids.append([tokenizer.cls_token_id] + [tokenizer.pad_token_id] * pad + list(prompt) + [tokenizer.bos_token_id])
        mask.append([True] + [False] * pad + [True] * (len(prompt) + 1))
    return ids, mask


def build_train_batch(prompts: Sequence[Sequence[int]], contents: Sequence[Sequence[int]],
                      drops: Sequence[Sequence[int]], tokenizer: Tokenizer) -> IlmTrainBatch:
    """The batch for given drops: `drops[b]` are indices into `contents[b]` (the droppable tokens
    after [BOS]); `prompts[b]` are kept whole (empty for LM rows)."""
    if not len(prompts) == len(contents) == len(drops):
        raise ValueError(f"prompts, contents and drops must have one entry per row, got "
                         f"{len(prompts)}, {len(contents)} and {len(drops)}")
    prefix_ids, prefix_mask = _prefix(prompts, tokenizer)
    bos_col = len(prefix_ids[0]) - 1 if prefix_ids else 0
    rows, cols, tokens, weights, num_dropped, kept_rows = [], [], [], [], [], []
    for b, (content, dropped) in enumerate(zip(contents, drops)):
        dropped = set(int(j) for j in dropped)
        if any(not 0 <= j < len(content) for j in dropped):
            raise ValueError(f"row {b}: drop indices {sorted(dropped)} must be in [0, {len(content)})")
        kept: list[int] = []
        for j, token in enumerate(content):
            if j in dropped:
                rows.append(b)
                cols.append(bos_col + len(kept))  # the gap after the last kept token ([BOS] when none)
                tokens.append(int(token))
                weights.append(1.0 / len(dropped))
            else:
                kept.append(int(token))
        kept_rows.append(kept)
        num_dropped.append(len(dropped))
    width = len(prefix_ids[0]) + max(len(k) for k in kept_rows) if prefix_ids else 0
    input_ids = torch.full((len(contents), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(contents), width), dtype=torch.bool)
    for b, (ids, mask, kept) in enumerate(zip(prefix_ids, prefix_mask, kept_rows)):
        row = ids + kept
        input_ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[b, : len(row)] = torch.tensor(mask + [True] * len(kept))
    gap_mask = attention_mask.clone()
    gap_mask[:, :bos_col] = False
    return {"input_ids": input_ids, "attention_mask": attention_mask, "gap_mask": gap_mask,
            "target_rows": torch.tensor(rows, dtype=torch.long), "target_cols": torch.tensor(cols, dtype=torch.long),
            "target_tokens": torch.tensor(tokens, dtype=torch.long),
            "target_weights": torch.tensor(weights, dtype=torch.float),
            "num_dropped": torch.tensor(num_dropped, dtype=torch.long)}


class _DropCollator(abc.ABC):
    """Shared by the seq2seq and LM collators; each says what its rows' prompt and droppable content are."""

    def __init__(self, tokenizer: Tokenizer, *, max_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_len = max_len

    @abc.abstractmethod
    def rows(self, examples: Sequence[Mapping[str, Any]]) -> tuple[list[list[int]], list[list[int]]]:
        """(prompt ids, droppable content ids) per example."""

    def __call__(self, examples: Sequence[Mapping[str, Any]], *, generator: torch.Generator | None = None,
                 drops: Sequence[Sequence[int]] | None = None) -> IlmTrainBatch:
        """Random drops, or the given ones (`drops[b]`: indices into row b's droppable tokens)."""
        prompts, contents = self.rows(examples)
        for prompt, content in zip(prompts, contents):
            check_fits(2 + len(prompt) + len(content), self.max_len, "a [CLS] + prompt + [BOS] + target row",
                       also=OR_MAX_NEW_TOKENS)
        if drops is None:
            drops = [sample_drops(len(c), generator=generator) for c in contents]
        return build_train_batch(prompts, contents, drops, self.tokenizer)


class IlmSeq2SeqCollator(_DropCollator):
    """`prompt_ids` -> `target_ids` rows: tokens are dropped from the target only."""

    def rows(self, examples: Sequence[Mapping[str, Any]]) -> tuple[list[list[int]], list[list[int]]]:
        return [list(ex["prompt_ids"]) for ex in examples], [list(ex["target_ids"]) for ex in examples]


class IlmLMCollator(_DropCollator):
    """`input_ids` rows (unconditional): every token after the leading [BOS] may be dropped."""

    def rows(self, examples: Sequence[Mapping[str, Any]]) -> tuple[list[list[int]], list[list[int]]]:
        bos = self.tokenizer.bos_token_id
        contents = []
        for ex in examples:
            row = list(ex["input_ids"])
            contents.append(row[1:] if row and row[0] == bos else row)
        return [[] for _ in examples], contents


class IlmPredictCollator:
    """`[CLS] [PAD]... prompt [BOS]` rows (seq2seq), or `[CLS] [BOS]` when the examples have no
    `prompt_ids` (unconditional generation). Insertions go after [BOS] only."""

    def __init__(self, tokenizer: Tokenizer, *, max_new_tokens: int, max_len: int) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens (sampler.max_new_tokens) must be >= 1, got {max_new_tokens}")
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.max_len = max_len

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> IlmPredictBatch:
        with_prompt = ["prompt_ids" in ex for ex in examples]
        if any(with_prompt) and not all(with_prompt):
            raise ValueError("a prediction batch mixes rows with and without prompt_ids; "
                             "give every row a prompt (seq2seq) or none (unconditional)")
        prompts = [list(ex.get("prompt_ids", [])) for ex in examples]
        ids, mask = _prefix(prompts, self.tokenizer)
        check_fits(len(ids[0]) + self.max_new_tokens, self.max_len, "a [CLS] + prompt + [BOS] + max_new_tokens row",
                   also=OR_MAX_NEW_TOKENS)
        input_ids = torch.tensor(ids, dtype=torch.long)
        attention_mask = torch.tensor(mask, dtype=torch.bool)
        gap_mask = torch.zeros_like(attention_mask)
        gap_mask[:, -1] = True  # [BOS]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "gap_mask": gap_mask,
                "target_ids": [list(ex.get("target_ids", [])) for ex in examples]}
