"""Cross-entropy that spends its logits' storage on the softmax and then on the gradient.

`F.cross_entropy` allocates a log-softmax, a zero-filled gradient and the softmax backward's
output, each the size of the logits (48 MB per step at 4,080 x 1,024), and on CPU glibc often
returns such blocks to the kernel and faults them in again the next step. A loss whose logits are
a temporary (the head's output, read by nothing else) can give that storage up instead: one
softmax written over the logits, the gradient written over the softmax.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

Reduction = Literal["sum", "mean", "none"]


class _ConsumingCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: Tensor, target: Tensor) -> Tensor:
        # amax, not max: torch's CPU max(dim) also finds the index and is ~20x slower
        row_max = logits.amax(dim=-1, keepdim=True)
        target_logit = logits.gather(1, target[:, None])
        probs = torch.ops.aten._softmax.out(logits, -1, False, out=logits)
        # log-sum-exp = max - log(largest p), and the largest p >= 1/vocab never underflows
        nll = (row_max - target_logit - probs.amax(dim=-1, keepdim=True).log()).squeeze(1)
        ctx.save_for_backward(target)
        ctx.probs = probs
        return nll

    @staticmethod
    def backward(ctx: Any, grad_nll: Tensor) -> tuple[Tensor, None]:
        probs = ctx.probs
        if probs is None:
            raise RuntimeError("consuming_cross_entropy's backward can run once: the gradient is written "
                               "over its logits (call it again for a second backward)")
        ctx.probs = None
        (target,) = ctx.saved_tensors
        grad = grad_nll[:, None]
        probs.mul_(grad).scatter_add_(1, target[:, None], -grad)  # (softmax - one_hot) * grad
        return probs, None


def consuming_cross_entropy(logits: Float[Tensor, "rows vocab"], target: Int[Tensor, " rows"], *,
                            reduction: Reduction = "mean") -> Tensor:
    """`F.cross_entropy(logits, target, reduction=...)` (no ignore_index, no smoothing) that
    overwrites `logits`: pass only logits nothing else reads afterwards."""
    if logits.ndim != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"expected logits (rows, vocab) and target (rows,), got {tuple(logits.shape)} "
                         f"and {tuple(target.shape)}")
    if not logits.is_floating_point() or target.dtype != torch.long:
        raise ValueError(f"expected float logits and int64 targets, got {logits.dtype} and {target.dtype}")
    if reduction not in ("sum", "mean", "none"):
        raise ValueError(f"reduction must be 'sum', 'mean' or 'none', got {reduction!r}")
    # the check names the likely cause (a -100 label); on an accelerator it would stall the host on
    # the device every step, and gather's device-side assert still stops a bad target there
    if target.numel() and target.device.type == "cpu":
        low, high = (int(v) for v in torch.aminmax(target))
        if low < 0 or high >= logits.size(1):
            raise ValueError(f"targets must lie in [0, {logits.size(1)}), got {low}..{high} "
                             "(select the scored positions first: there is no ignore_index)")
    nll = _ConsumingCrossEntropy.apply(logits.contiguous(), target)
    if reduction == "none":
        return nll
    return nll.sum() if reduction == "sum" else nll.mean()
