"""The ILM objective: one cross-entropy over all (gap, token) pairs of a row, plus the stop loss.

For row b with logits l[s, v] (s = a gap column of the row, v = a token) the model's insertion
distribution is the softmax over the flattened (s, v) pairs, so its log-normaliser is
Z_b = logsumexp_{s in gaps, v} l[s, v] (computed as a logsumexp over gaps of the per-gap
logsumexp: the same number, without a masked copy of the logits). The target distribution puts
weight 1/n on each of the n dropped tokens' (gap, token) pairs (duplicates add up), so

    token_nll_b = sum_t w_t (Z_b - l[s_t, v_t]) = Z_b - (1/n) sum_t l[s_t, v_t]      (0 when n = 0)
    stop_nll_b  = cross-entropy of the stop head with target "stop" iff n = 0

The same two terms bound the likelihood (an ELBO over insertion orders). A uniformly random order
sigma of a row's L tokens maps one-to-one onto an insertion path to it (the path's gap indices
recover sigma), and the canvas before the step that leaves n tokens to insert keeps a uniformly
random L - n of them, with the next insertion uniform over the n missing ones: the targets above.
With q(sigma) = 1/L! and n ~ U{0, ..., L} as in training, Jensen gives

    -log p(x) <= E_sigma[-log p(path(sigma)) - log p(stop | x)] - log L!
              =  E_n[(L + 1) (token_nll_b + stop_nll_b)] - log L!

one unbiased sample of which per row is `nll_bound_sum` (the stop head counted with weight 1,
and stopping read as a draw from it, not the sampler's threshold).

Both are averaged over the rows of the batch; `num_tokens` is the number of rows, so the
trainer's weighting by `num_tokens` (gradient accumulation, data parallelism, evaluation) gives
the mean over all rows. Only the gap columns ([BOS] and what follows it, never [CLS], the prompt
or padding) enter the normaliser: the sampler inserts nowhere else. (xlm-core's loss also
normalises over the prompt columns, which its sampler then never uses.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .model import CONTINUE, STOP
from .types import IlmLossDict, IlmTrainBatch


def ilm_loss(model: torch.nn.Module, batch: IlmTrainBatch, *, stop_loss_weight: float = 1.0) -> IlmLossDict:
    cls = {"cls_position": batch["cls_position"]} if "cls_position" in batch else {}  # [CLS] not in column 0
    token_logits, stop_logits = model(batch["input_ids"], attention_mask=batch["attention_mask"], **cls)
    logits = token_logits.float()
    gap_mask = batch["gap_mask"]
    per_gap = logits.logsumexp(dim=-1).masked_fill(~gap_mask, float("-inf"))  # (batch, seq)
    log_z = per_gap.logsumexp(dim=-1)  # (batch,)
    rows, weights = batch["target_rows"], batch["target_weights"].float()
    picked = logits[rows, batch["target_cols"], batch["target_tokens"]]  # (targets,)
    batch_size = logits.size(0)
    target_mass = torch.zeros(batch_size, device=logits.device).index_add(0, rows, weights)
    target_score = torch.zeros(batch_size, device=logits.device).index_add(0, rows, weights * picked)
    has_targets = batch["num_dropped"] > 0
    token_nll = torch.where(has_targets, target_mass * log_z - target_score, torch.zeros_like(log_z))

    stop_target = torch.where(has_targets, CONTINUE, STOP)
    stop_nll = F.cross_entropy(stop_logits.float(), stop_target, reduction="none")

    length = batch["gap_mask"].sum(dim=-1) - 1 + batch["num_dropped"]  # the row's L: kept + dropped after [BOS]
    nll_bound = (length + 1) * (token_nll + stop_nll).detach() - torch.lgamma(length + 1.0)

    token_loss, stop_loss = token_nll.mean(), stop_nll.mean()
    loss = token_loss + stop_loss_weight * stop_loss
    num_rows = torch.tensor(batch_size, device=logits.device)
    return {"loss": loss, "num_tokens": num_rows, "nll_sum": loss.detach() * batch_size,
            "token_loss": token_loss.detach(), "stop_loss": stop_loss.detach(),
            "num_targets": torch.tensor(rows.numel(), device=logits.device),
            "nll_bound_sum": nll_bound.sum(), "bound_tokens": length.sum()}
