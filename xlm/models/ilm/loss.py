"""The ILM objective: one cross-entropy over all (gap, token) pairs of a row, plus the stop loss.

For row b with logits l[s, v] (s = a gap column of the row, v = a token) the model's insertion
distribution is the softmax over the flattened (s, v) pairs of the row's gaps G_b, so its log-normaliser is
Z_b = logsumexp_{s in G_b, v} l[s, v] (computed as a logsumexp over gaps of the per-gap
logsumexp: the same number, without a masked copy of the logits). The target distribution puts
weight 1/n on each of the n dropped tokens' (gap, token) pairs (duplicates add up), so

    token_nll_b = sum_t w_t (Z_b - l[s_t, v_t]) = Z_b - (1/n) sum_t l[s_t, v_t]      (0 when n = 0)
    stop_nll_b  = cross-entropy of the stop head with target "stop" iff n = 0
    loss        = mean_b token_nll_b + stop_loss_weight * mean_b c_b stop_nll_b

G_b (`insertion_gaps`) is "target" by default: [BOS] and the kept tokens after it, never [CLS], the
prompt or padding, which are the gaps our sampler inserts into, so the loss normalises over exactly the
choices generation has. "attended" is xlm-core's: every attended column but [CLS], the prompt's included
(xlm-core's ILMPredictorWithStoppingClassification, given no `constraint`, and its seq2seq prediction collator
gives none, keeps only [CLS] and padding out, so it may insert there too). On rows without a prompt the two
are one set. The class weight c_b is 1 by default, so the
loss keeps the likelihood's terms; xlm-core's `stopping_class_weight` w gives c_b = w on rows whose target
is "stop" (n = 0) and 1 - w on the others (torch's per-class `weight` with no renormalisation, as
xlm-core's per-row cross-entropy has it).

The same two terms, unweighted, bound the likelihood (an ELBO over insertion orders). A uniformly random order
sigma of a row's L tokens maps one-to-one onto an insertion path to it (the path's gap indices
recover sigma), and the canvas before the step that leaves n tokens to insert keeps a uniformly
random L - n of them, with the next insertion uniform over the n missing ones: the targets above.
With q(sigma) = 1/L! and n ~ U{0, ..., L} as in training, Jensen gives

    -log p(x) <= E_sigma[-log p(path(sigma)) - log p(stop | x)] - log L!
              =  E_n[(L + 1) (token_nll_b + stop_nll_b)] - log L!

one unbiased sample of which per row is `nll_bound_sum` (the stop head counted with weight 1,
and stopping read as a draw from it, not the sampler's threshold; with "attended" gaps it is the bound for
insertions anywhere attended, and a looser one for our sampler, which only uses the target's gaps).

Both are averaged over the rows of the batch; `num_tokens` is the number of rows, so the
trainer's weighting by `num_tokens` (gradient accumulation, data parallelism, evaluation) gives
the mean over all rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool
from torch import Tensor

from xlm.errors import InvalidValueError

from .config import INSERTION_GAPS
from .model import CONTINUE, STOP
from .types import IlmLossDict, IlmTrainBatch


def insertion_columns(batch: IlmTrainBatch, insertion_gaps: str) -> Bool[Tensor, "batch seq"]:
    """The columns whose gaps the insertion softmax covers: the target's (`gap_mask`), or every attended column
    but [CLS] (column 0 as xlm's collators put it, or the batch's `cls_position`)."""
    if insertion_gaps not in INSERTION_GAPS:
        raise InvalidValueError(f"insertion_gaps must be one of {INSERTION_GAPS}, got {insertion_gaps!r}")
    if insertion_gaps == "target":
        return batch["gap_mask"]
    columns = batch["attention_mask"].clone()
    cls_column = batch.get("cls_position")
    if cls_column is None:
        columns[:, 0] = False
    else:
        columns[torch.arange(columns.size(0), device=columns.device), cls_column] = False
    return columns


def insertion_log_normaliser(logits: Tensor, columns: Bool[Tensor, "batch seq"]) -> Tensor:
    """Z_b: the logsumexp over the row's (gap, token) pairs in `columns`, as a logsumexp of per-gap logsumexps."""
    return logits.logsumexp(dim=-1).masked_fill(~columns, float("-inf")).logsumexp(dim=-1)


def ilm_loss(model: torch.nn.Module, batch: IlmTrainBatch, *, stop_loss_weight: float = 1.0,
             stopping_class_weight: float | None = None, insertion_gaps: str = "target") -> IlmLossDict:
    cls = {"cls_position": batch["cls_position"]} if "cls_position" in batch else {}  # [CLS] not in column 0
    token_logits, stop_logits = model(batch["input_ids"], attention_mask=batch["attention_mask"], **cls)
    logits = token_logits.float()
    columns = insertion_columns(batch, insertion_gaps)
    log_z = insertion_log_normaliser(logits, columns)  # (batch,)
    rows, weights = batch["target_rows"], batch["target_weights"].float()
    picked = logits[rows, batch["target_cols"], batch["target_tokens"]]  # (targets,)
    batch_size = logits.size(0)
    target_mass = torch.zeros(batch_size, device=logits.device).index_add(0, rows, weights)
    target_score = torch.zeros(batch_size, device=logits.device).index_add(0, rows, weights * picked)
    has_targets = batch["num_dropped"] > 0
    token_nll = torch.where(has_targets, target_mass * log_z - target_score, torch.zeros_like(log_z))

    stop_target = torch.where(has_targets, CONTINUE, STOP)
    stop_nll = F.cross_entropy(stop_logits.float(), stop_target, reduction="none")
    stop_term = stop_nll
    if stopping_class_weight is not None:
        stop_term = stop_nll * torch.where(has_targets, 1.0 - stopping_class_weight, stopping_class_weight)

    length = batch["gap_mask"].sum(dim=-1) - 1 + batch["num_dropped"]  # the row's L: kept + dropped after [BOS]
    nll_bound = (length + 1) * (token_nll + stop_nll).detach() - torch.lgamma(length + 1.0)

    token_loss, stop_loss = token_nll.mean(), stop_term.mean()
    loss = token_loss + stop_loss_weight * stop_loss
    num_rows = torch.tensor(batch_size, device=logits.device)
    return {"loss": loss, "num_tokens": num_rows, "nll_sum": loss.detach() * batch_size,
            "token_loss": token_loss.detach(), "stop_loss": stop_loss.detach(),
            "num_targets": torch.tensor(rows.numel(), device=logits.device),
            "nll_bound_sum": nll_bound.sum(), "bound_tokens": length.sum()}
