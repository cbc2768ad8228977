"""Normalization layers chosen by name."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

NORMS = ("layernorm", "rmsnorm")


class RMSNorm(nn.RMSNorm):
    """torch's RMSNorm, computed in fp32 and cast back so bf16 activations keep precision."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        return F.rms_norm(x.float(), self.normalized_shape, weight, self.eps).to(x.dtype)


def make_norm(kind: str, dim: int, eps: float, bias: bool = True) -> nn.Module:
    """`bias` applies to layernorm only (RMSNorm has none)."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")
