"""Batch and output types of the ILM family.

Targets are sparse: one entry per dropped token (row, gap column, token id, weight), never a
(batch, seq, vocab) tensor.
"""

from __future__ import annotations

from typing import TypedDict

from jaxtyping import Bool, Float, Int
from torch import Tensor


class ClsPosition(TypedDict, total=False):
    """Optional in a batch: the column of each row's [CLS] where it is not column 0 (xlm-core's prefix batches are
    left-padded, [PAD]... [CLS] prompt [BOS]); the stop head reads it there."""

    cls_position: Int[Tensor, " batch"]


class IlmTrainBatch(ClsPosition):
    input_ids: Int[Tensor, "batch seq"]  # [CLS] [PAD]... prompt [BOS] kept tokens [PAD]...
    attention_mask: Bool[Tensor, "batch seq"]  # True at real tokens
    gap_mask: Bool[Tensor, "batch seq"]  # real columns from [BOS] on: the target's gaps (loss.py: insertion_gaps)
    target_rows: Int[Tensor, " targets"]  # one entry per dropped token
    target_cols: Int[Tensor, " targets"]  # column of the kept token the dropped one follows (its gap)
    target_tokens: Int[Tensor, " targets"]  # the dropped token
    target_weights: Float[Tensor, " targets"]  # 1 / (tokens dropped from that row): each row's targets sum to 1
    num_dropped: Int[Tensor, " batch"]  # 0 = nothing to insert: the stop head's target is "stop"


class IlmPredictBatch(ClsPosition):
    input_ids: Int[Tensor, "batch seq"]  # [CLS] [PAD]... prompt [BOS] (unconditional: [CLS] [BOS])
    attention_mask: Bool[Tensor, "batch seq"]
    gap_mask: Bool[Tensor, "batch seq"]  # where insertions may go: the [BOS] column (and later inserts)
    target_ids: list[list[int]]  # kept aside for metrics; empty lists when unknown


class IlmLossDict(TypedDict):
    loss: Tensor  # token_loss + stop_loss_weight * stop_loss, a mean over rows
    num_tokens: Tensor  # the number of rows: the unit every part of the loss is averaged over
    nll_sum: Tensor  # loss * num_tokens
    token_loss: Tensor  # mean over rows of the cross-entropy of the (gap, token) target distribution
    stop_loss: Tensor  # mean over rows of the stop classifier's cross-entropy (class-weighted: loss.py)
    num_targets: Tensor  # dropped tokens in the batch
    nll_bound_sum: Tensor  # sum over rows of a one-sample estimate of an upper bound on -log p(row) (loss.py)
    bound_tokens: Tensor  # the tokens those rows insert in all (the bound's per-token denominator)


class IlmPredictionDict(TypedDict):
    ids: list[list[int]]  # inserted tokens per row in sequence order, specials stripped
    text: list[str]
    sequences: list[list[int]]  # each full row in sequence order: [CLS] prompt [BOS] inserted tokens
    num_inserted: list[int]  # insertions per row
    num_model_calls: int  # forward passes the sampler made
    row_calls: list[int]  # forward passes each row took part in until it stopped (its own cost at batch size 1)
