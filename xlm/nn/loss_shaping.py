"""What a masked objective (MLM, MDLM) may add so that hard tokens get learnt: focal token weights, a
whole-target masking curriculum and masking a token's repeats together (xlm issue #30: star tasks, where a
masked model learns the copies and no edge lookup).

* Focal weights (Lin et al. 2017, "Focal Loss for Dense Object Detection"): a token's NLL is multiplied by
  (1 - p)^gamma, p the probability the model puts on the right token (no gradient through the weight). Tokens
  the model already gets (copies, [EOS], [PAD]) fade; the ones it spreads over candidates (the lookups) keep
  their weight. This is the token-level reweighting by difficulty of Ye et al. 2024 ("Beyond Autoregression:
  Discrete Diffusion for Complex Reasoning and Planning", MGDM) in its focal form, without their scale factor,
  which only rescales the learning rate.
* Whole-target masking: a training row has its whole block masked (t = 1) with a probability that falls
  linearly from `whole_mask_prob` at step 0 to 0 at `whole_mask_steps` (0: it stays at `whole_mask_prob`).
  Early on the model then trains on its first decision more often than uniform t gives it.
* Repeats masked together: every maskable position holding the same token as an earlier one in its row
  takes that position's draw, so a token is hidden everywhere or nowhere (each position is still masked with
  probability t). A hidden token can then never be read off its own repeat: on a star target, where each
  inner node of the path is written twice, every hidden node must be looked up from the edge list. This is
  whole-word masking (BERT) with "word" read as "token id".
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def focal_weights(log_p: Float[Tensor, "*shape"], gamma: float) -> Float[Tensor, "*shape"]:
    """(1 - p)^gamma for each log-probability of the right token, detached; all ones when gamma is 0."""
    if gamma == 0.0:
        return torch.ones_like(log_p)
    return (-torch.expm1(log_p.detach().float())).clamp(min=0.0).pow(gamma)


def whole_mask_probability(step: int, *, start: float, steps: int) -> float:
    """The chance that a training row is masked whole at `step`: `start`, falling linearly to 0 at `steps`
    (`steps` 0: `start` throughout)."""
    if steps <= 0:
        return start
    return start * max(0.0, 1.0 - step / steps)


def tie_repeats(draws: Float[Tensor, "batch seq"], token_ids: Int[Tensor, "batch seq"],
                maskable: Bool[Tensor, "batch seq"]) -> Float[Tensor, "batch seq"]:
    """Each maskable position takes the draw of the first maskable position of its row with the same token, so
    thresholding the draws masks a token's repeats together; other positions keep their own draw."""
    same = (token_ids[:, :, None] == token_ids[:, None, :]) & maskable[:, None, :]
    first = same.to(torch.uint8).argmax(dim=2)  # argmax gives the first of equal maxima
    return torch.where(maskable, draws.gather(1, first), draws)


def check_loss_shaping(config: object) -> None:
    """The three settings of a config that has them (`focal_gamma`, `whole_mask_prob`, `whole_mask_steps`)."""
    gamma, prob, steps = (getattr(config, k) for k in ("focal_gamma", "whole_mask_prob", "whole_mask_steps"))
    if gamma < 0:
        raise ValueError(f"focal_gamma must be >= 0 (0: every token weighs 1), got {gamma}")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"whole_mask_prob must be in [0, 1], got {prob}")
    if steps < 0:
        raise ValueError(f"whole_mask_steps must be >= 0 (0: no decay), got {steps}")
