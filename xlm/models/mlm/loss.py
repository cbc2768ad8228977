"""Cross-entropy at the masked positions, optionally weighted per row.

For masked position i of row b, nll_i = -log p(x_i | the row with its masked positions hidden), and

    loss = (1/N) sum_i w_b nll_i          N = the batch's masked positions (`num_tokens`)

with the row weight w_b by `weighting`:

    "none"               1: the mean NLL per masked token, each counting the same (the default)
    "inverse_t"          1 / max(t_b, 1/L_b): the masking ELBO's weight (L_b = the row's maskable positions)
    "num_masked_factor"  1 / (n_b + 1), n_b = the row's masked positions: xlm-core's `use_num_masked_factor`

xlm-core's MLMLoss multiplies its (batch, seq) cross-entropy by the (batch,) factor, which broadcasts along the
sequence: as written it runs only with one row per batch (where it is this weight) or with as many rows as
columns (where column j gets row j's factor); "num_masked_factor" is the per-row weight it names. Its mean is
over the masked positions, as here.
"""

from __future__ import annotations

import torch

from xlm.errors import InvalidValueError
from xlm.nn.cross_entropy import consuming_cross_entropy
from xlm.nn.loss_shaping import focal_weights

from .config import LOSS_WEIGHTINGS
from .types import MlmLossDict, MlmTrainBatch


def mlm_loss(model: torch.nn.Module, batch: MlmTrainBatch, *, weighting: str = "none",
             focal_gamma: float = 0.0) -> MlmLossDict:
    """The model computes logits at the masked positions only. `focal_gamma` > 0 multiplies each
    token's NLL by (1 - p_right)^focal_gamma as well (`xlm.nn.loss_shaping.focal_weights`).

    With "inverse_t" a row's t is taken as at least 1/L (L = its maskable positions): below
    that rate the row is masked by the at-least-one rule, i.e. as if t were 1/L, and an
    unbounded 1/t would let one such row swamp the batch.
    """
    if weighting not in LOSS_WEIGHTINGS:
        raise InvalidValueError(f"weighting must be one of {LOSS_WEIGHTINGS}, got {weighting!r}")
    masked = batch["masked"]
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"], output_positions=masked)
    nll = consuming_cross_entropy(logits.float(), batch["target_ids"][masked], reduction="none")
    if weighting != "none":
        if weighting == "inverse_t":
            floor = 1.0 / batch["maskable"].sum(dim=1).clamp(min=1).float()
            weight = 1.0 / torch.maximum(batch["t"].float(), floor)
        else:
            weight = 1.0 / (masked.sum(dim=1).float() + 1.0)
        rows = masked.nonzero()[:, 0]  # row of each selected position, in the same row-major order
        nll = nll * weight[rows]
    if focal_gamma:
        nll = nll * focal_weights(-nll, focal_gamma)
    nll_sum = nll.sum()
    num_tokens = masked.sum()
    return {"loss": nll_sum / num_tokens.clamp(min=1), "num_tokens": num_tokens, "nll_sum": nll_sum}
