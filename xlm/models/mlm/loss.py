"""Cross-entropy at the masked positions, optionally weighted by 1/t."""

from __future__ import annotations

import torch

from xlm.nn.cross_entropy import consuming_cross_entropy

from .config import LOSS_WEIGHTINGS
from .types import MlmLossDict, MlmTrainBatch


def mlm_loss(model: torch.nn.Module, batch: MlmTrainBatch, *, weighting: str = "none") -> MlmLossDict:
    """Mean over the masked positions of NLL (`weighting="none"`) or NLL / t (`"inverse_t"`, the
    masking ELBO's weight). The model computes logits at the masked positions only.

    With "inverse_t" a row's t is taken as at least 1/L (L = its maskable positions): below
    that rate the row is masked by the at-least-one rule, i.e. as if t were 1/L, and an
    unbounded 1/t would let one such row swamp the batch.
    """
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {LOSS_WEIGHTINGS}, got {weighting!r}")
    masked = batch["masked"]
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"], output_positions=masked)
    nll = consuming_cross_entropy(logits.float(), batch["target_ids"][masked], reduction="none")
    if weighting == "inverse_t":
        floor = 1.0 / batch["maskable"].sum(dim=1).clamp(min=1).float()
        weight = 1.0 / torch.maximum(batch["t"].float(), floor)
        rows = masked.nonzero()[:, 0]  # row of each selected position, in the same row-major order
        nll = nll * weight[rows]
    nll_sum = nll.sum()
    num_tokens = masked.sum()
    return {"loss": nll_sum / num_tokens.clamp(min=1), "num_tokens": num_tokens, "nll_sum": nll_sum}
