"""Position-wise MLP: GELU (GPT-2/BERT), ReLU (xlm-core's default) or SwiGLU (Llama).

The output projection is always `down_proj`, so models can find it for residual-scaled init.
`hidden` is the one place the activation is computed, so the CPU fast paths of `xlm.nn.cpu`
(a compiled tanh GELU for training, the activation in the matmul's epilogue for decoding) can
replace it from outside.
"""

from __future__ import annotations

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

ACTIVATIONS = ("gelu", "gelu_tanh", "swiglu", "relu")


class FeedForward(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, *, activation: str = "gelu", bias: bool = True) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        if activation == "swiglu":
            self.gate_proj = nn.Linear(dim, ffn_dim, bias=bias)
        self.up_proj = nn.Linear(dim, ffn_dim, bias=bias)
        self.down_proj = nn.Linear(ffn_dim, dim, bias=bias)

    def hidden(self, x: Float[Tensor, "... dim"]) -> Float[Tensor, "... ffn_dim"]:
        """down_proj's input: the activation of the first projection (times up_proj(x) for SwiGLU)."""
        if self.activation == "swiglu":
            return F.silu(self.gate_proj(x)) * self.up_proj(x)
        if self.activation == "relu":
            return F.relu(self.up_proj(x))
        return F.gelu(self.up_proj(x), approximate="tanh" if self.activation == "gelu_tanh" else "none")

    def forward(self, x: Float[Tensor, "... dim"]) -> Float[Tensor, "... dim"]:
        return self.down_proj(self.hidden(x))
