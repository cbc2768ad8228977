"""The few interfaces shared by every family: what the recipes call, nothing more.

A family's collators, loss and predictor are built for each other (xlm-core's design);
only the unit that binds them has to look the same from the outside.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypedDict

import torch
from torch import Tensor


class LossDict(TypedDict, total=False):
    """`loss` is a mean over `num_tokens` items; the trainer re-weights by `num_tokens`
    so that accumulation and data parallelism give per-token means over the global batch."""

    loss: Tensor
    num_tokens: Tensor
    nll_sum: Tensor
    nll_bound_sum: Tensor  # optional: a family whose loss is not a per-token NLL gives a bound on one
    bound_tokens: Tensor  # ... and the tokens it is over (evaluation reports the ratio as nll_bound)


class PredictionDict(TypedDict):
    ids: list[list[int]]  # generated tokens per row, specials stripped, up to the end marker
    text: list[str]


class Unit(Protocol):
    """Binds a family's collators, loss and predictor to one model and tokenizer."""

    model: torch.nn.Module
    tokenizer: Any

    def collate_train(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]: ...

    def collate_predict(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]: ...

    def loss(self, model: torch.nn.Module, batch: Mapping[str, Any]) -> LossDict:
        """`model` is `self.model` or its DDP/compiled wrapper: call it, never its submodules."""
        ...

    def predict(self, batch: Mapping[str, Any]) -> PredictionDict: ...

    # Optional, looked up with getattr:
    #   set_training_step(step): the trainer's step before each training step (an objective's curriculum)
    #   target_probs(examples, reveal): what a task's probe reads (`xlm.data.tasks.star.probe_star`)
