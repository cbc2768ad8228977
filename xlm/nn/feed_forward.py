"""Position-wise MLP: GELU (GPT-2/BERT), ReLU (xlm-core's default) or SwiGLU (Llama).

The output projection is always `down_proj`, so models can find it for residual-scaled init.
The tanh GELU goes through `xlm.nn.cpu.gelu_tanh`, which compiles it for CPU training.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from .cpu.gelu_tanh import gelu_tanh

if TYPE_CHECKING:
    from .cpu.prepacked import PackedLinear

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
        # activation(first projection) in one oneDNN call, set by xlm.nn.cpu.prepacked while decoding
        self.packed_activated: PackedLinear | None = None

    def forward(self, x: Float[Tensor, "... dim"]) -> Float[Tensor, "... dim"]:
        if self.packed_activated is not None and self.packed_activated.applies_to(x):
            hidden = self.packed_activated(x)
            if self.activation == "swiglu":
                hidden = hidden * self.up_proj(x)
        elif self.activation == "swiglu":
            hidden = F.silu(self.gate_proj(x)) * self.up_proj(x)
        elif self.activation == "relu":
            hidden = F.relu(self.up_proj(x))
        elif self.activation == "gelu_tanh":
            hidden = gelu_tanh(self.up_proj(x))
        else:
            hidden = F.gelu(self.up_proj(x))
        return self.down_proj(hidden)
