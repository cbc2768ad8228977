"""Batch and output types of the MDLM family."""

from __future__ import annotations

from typing import TypedDict

from jaxtyping import Bool, Int
from torch import Tensor


class MdlmTrainBatch(TypedDict):
    input_ids: Int[Tensor, "batch seq"]  # clean tokens x0; the loss masks them
    attention_mask: Bool[Tensor, "batch seq"]  # True at real tokens (padding is hidden from attention)
    noise_mask: Bool[Tensor, "batch seq"]  # True where tokens may be masked; the loss is per such position


class MdlmPredictBatch(TypedDict):
    input_ids: Int[Tensor, "batch seq"]  # prompt + [BOS] + [MASK] block, prompts left padded
    attention_mask: Bool[Tensor, "batch seq"]
    fill_mask: Bool[Tensor, "batch seq"]  # True at the positions the sampler generates
    target_ids: list[list[int]]  # kept aside for metrics; empty lists when unknown


class MdlmLossDict(TypedDict):
    loss: Tensor  # NELBO estimate in nats per noise_mask position (the quantity optimised)
    num_tokens: Tensor  # noise_mask positions: `loss` is a mean over exactly these
    nll_sum: Tensor  # sum over masked positions of weight * NLL (= loss * num_tokens)
    num_masked: Tensor  # positions that were masked in this draw


class MdlmPredictionDict(TypedDict):
    ids: list[list[int]]  # generated block per row, up to (not including) [EOS], specials stripped
    text: list[str]
    sequences: Int[Tensor, "batch seq"]  # the whole rows after sampling (prompt, [BOS], filled block)
    start: int  # column where the generated block starts
    row_calls: list[int]  # per row, the model calls that ran it while it still had a masked position
