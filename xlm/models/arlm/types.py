"""Batch and output types of the ARLM family."""

from __future__ import annotations

from typing import TypedDict

from jaxtyping import Bool, Int
from torch import Tensor


class ArlmTrainBatch(TypedDict):
    input_ids: Int[Tensor, "batch seq"]
    attention_mask: Bool[Tensor, "batch seq"]  # True at real tokens (right padding)
    labels: Int[Tensor, "batch seq"]  # next token at each position; IGNORE_INDEX where no loss


class ArlmPredictBatch(TypedDict):
    input_ids: Int[Tensor, "batch prompt"]  # the prompt (+ [BOS] for seq2seq), left padded
    attention_mask: Bool[Tensor, "batch prompt"]
    target_ids: list[list[int]]  # kept aside for metrics; empty lists when unknown


class ArlmLossDict(TypedDict):
    loss: Tensor
    num_tokens: Tensor
    nll_sum: Tensor


class ArlmPredictionDict(TypedDict):
    ids: list[list[int]]  # new tokens per row, up to (not including) [EOS]; seq2seq: specials stripped
    text: list[str]
    sequences: Int[Tensor, "batch total"]  # prompt (left padded) + generated (padded after EOS)
    start: int  # column of `sequences` where the generated part starts
