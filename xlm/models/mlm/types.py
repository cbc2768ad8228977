"""Batch and output types of the MLM family."""

from __future__ import annotations

from typing import TypedDict

from jaxtyping import Bool, Float, Int
from torch import Tensor


class MlmTrainBatch(TypedDict):
    input_ids: Int[Tensor, "batch seq"]  # target_ids with [MASK] where `masked`
    # True at real tokens (only prompt left-padding / LM right-padding is False)
    attention_mask: Bool[Tensor, "batch seq"]
    target_ids: Int[Tensor, "batch seq"]  # the clean row
    maskable: Bool[Tensor, "batch seq"]  # positions that may be masked (seq2seq: the suffix block)
    masked: Bool[Tensor, "batch seq"]  # positions masked in input_ids; the loss covers exactly these
    t: Float[Tensor, " batch"]  # the masking rate drawn for each row


class MlmPredictBatch(TypedDict):
    input_ids: Int[Tensor, "batch seq"]  # left-padded prompt + [BOS] + [MASK] * block (unconditional: the block only)
    attention_mask: Bool[Tensor, "batch seq"]
    block_start: int  # column where the generated block starts (the same in every row)
    target_ids: list[list[int]]  # kept aside for metrics; empty lists when unknown


class MlmLossDict(TypedDict):
    loss: Tensor  # mean of the (weighted) NLL over the masked positions
    num_tokens: Tensor  # number of masked positions
    nll_sum: Tensor  # loss * num_tokens


class MlmPredictionDict(TypedDict):
    ids: list[list[int]]  # block tokens per row, up to (not including) the first [EOS], specials stripped
    text: list[str]
    sequences: Int[Tensor, "batch seq"]  # the input with every [MASK] filled
    block_start: int
    num_model_calls: int  # forward passes the sampler made
    row_calls: list[int]  # per row, the forward passes made while it still had a [MASK]
