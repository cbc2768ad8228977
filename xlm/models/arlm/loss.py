"""Next-token cross-entropy over the labelled positions."""

from __future__ import annotations

import torch

from xlm.nn.cross_entropy import consuming_cross_entropy

from .collators import IGNORE_INDEX
from .types import ArlmLossDict, ArlmTrainBatch


def arlm_loss(model: torch.nn.Module, batch: ArlmTrainBatch) -> ArlmLossDict:
    """Mean NLL per target token; `nll_sum` and `num_tokens` let callers re-weight exactly."""
    labels = batch["labels"]
    selected = labels != IGNORE_INDEX
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"], output_positions=selected)
    nll_sum = consuming_cross_entropy(logits.float(), labels[selected], reduction="sum")
    num_tokens = selected.sum()
    return {"loss": nll_sum / num_tokens.clamp(min=1), "num_tokens": num_tokens, "nll_sum": nll_sum}
