"""The continuous-time NELBO of MDLM with the SUBS parameterisation.

SUBS: the model never predicts [MASK] (its logit is -inf) and an unmasked position carries its
input token over, so only masked positions contribute. For a row drawn at time t,

    NELBO(x) ~= sum over masked positions of  sigma'(t) / expm1(sigma(t)) * -log p(x0 | x_t)

and, as in the paper, it is reported per token over all noised positions (masked or not):
divided by the number of `noise_mask` positions, so exp(loss) bounds the perplexity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from xlm.nn.loss_shaping import focal_weights, tie_repeats

from .noise import NoiseSchedule, sample_t
from .types import MdlmLossDict, MdlmTrainBatch


def subs_log_probs(logits: Float[Tensor, "... vocab"], mask_token_id: int) -> Float[Tensor, "... vocab"]:
    """Log-probabilities with zero mass on [MASK] (fp32)."""
    logits = logits.float().clone()
    logits[..., mask_token_id] = float("-inf")
    return F.log_softmax(logits, dim=-1)


def mdlm_loss(model: torch.nn.Module, batch: MdlmTrainBatch, *, schedule: NoiseSchedule, mask_token_id: int,
              sampling_eps: float, antithetic: bool, t: Float[Tensor, "batch"] | None = None,
              masked: Bool[Tensor, "batch seq"] | None = None, whole_prob: float = 0.0,
              focal_gamma: float = 0.0, mask_repeats: bool = False, elbo_weight: bool = True,
              generator: torch.Generator | None = None) -> MdlmLossDict:
    """One draw of t per row and of the mask (each `noise_mask` position is masked with
    probability 1 - exp(-sigma(t))); pass `t` and/or `masked` to fix them.

    Loss shaping (`xlm.nn.loss_shaping`, training only): with `whole_prob` > 0 each row is first
    taken at t = 1 with every `noise_mask` position masked, with that probability; `focal_gamma` > 0
    multiplies each masked token's ELBO-weighted NLL by (1 - p_right)^focal_gamma, which makes the
    loss a reweighted objective rather than a bound; `mask_repeats` masks a token's repeats in a row
    together (each position still masked with probability 1 - exp(-sigma(t))); `elbo_weight` False drops the
    ELBO weight and averages over the masked tokens instead of the noised positions (MLM's objective: a row
    counts in proportion to how many tokens it masks, where the ELBO gives every row the same expected weight).

    The network's vocabulary projection runs at the masked positions only."""
    x0, noise_mask = batch["input_ids"], batch["noise_mask"]
    batch_size = x0.size(0)
    if t is None:
        t = sample_t(batch_size, sampling_eps=sampling_eps, antithetic=antithetic, device=x0.device,
                     generator=generator)
    t = t.to(device=x0.device, dtype=torch.float32)
    whole = None
    if whole_prob > 0.0:
        whole = torch.rand(batch_size, device=x0.device, generator=generator) < whole_prob
        t = torch.where(whole, 1.0, t)
    sigma = schedule.sigma(t)
    if masked is None:
        draws = torch.rand(x0.shape, device=x0.device, generator=generator)
        if mask_repeats:
            draws = tie_repeats(draws, x0, noise_mask)
        masked = draws < schedule.move_chance(t)[:, None]
    if whole is not None:
        masked = masked | whole[:, None]
    masked = masked & noise_mask
    xt = torch.where(masked, mask_token_id, x0)
    logits = model(xt, sigma, attention_mask=batch["attention_mask"], output_positions=masked)
    log_p = subs_log_probs(logits, mask_token_id).gather(-1, x0[masked][:, None]).squeeze(-1)
    weight = focal_weights(log_p, focal_gamma)
    if elbo_weight:
        weight = weight * schedule.loss_weight(t)[:, None].expand_as(masked)[masked]
    nll_sum = -(weight * log_p).sum()
    num_masked = masked.sum()
    num_tokens = noise_mask.sum() if elbo_weight else num_masked
    return {"loss": nll_sum / num_tokens.clamp(min=1), "num_tokens": num_tokens, "nll_sum": nll_sum,
            "num_masked": num_masked}
