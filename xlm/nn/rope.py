"""Rotary position embedding (RoPE), NeoX "half-split" convention as in GPT-NeoX/Llama.

Positions are explicit per row so left-padded batches and KV-cached decoding rotate each
token by its real position. Tables are kept in fp32 outside the state dict: they are a pure
function of (base, rotary_dim) and would lose precision if the model were cast to bf16.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn


def rotate_half(x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


#: Positions the first table covers at most; it doubles past them, as far as the positions asked for.
_FIRST_TABLE = 4096


class RotaryEmbedding(nn.Module):
    """Rotates the first `rotary_dim` dims of each head; the rest pass through (partial rotary)."""

    def __init__(self, head_dim: int, *, rotary_dim: int | None = None, base: float = 10000.0,
                 max_len: int = 2048) -> None:
        super().__init__()
        rotary_dim = head_dim if rotary_dim is None else rotary_dim
        if rotary_dim <= 0 or rotary_dim % 2 or rotary_dim > head_dim:
            raise ValueError(f"rotary_dim must be even and in (0, head_dim={head_dim}], got {rotary_dim}")
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim
        self.base = base
        self.max_len = max_len
        self._cos: Tensor | None = None
        self._sin: Tensor | None = None
        # every layer receives the same positions tensor in one forward: look it up once
        self._last: tuple[Tensor, int, Tensor, Tensor] | None = None

    def _build(self, length: int, device: torch.device) -> None:
        inv_freq = 1.0 / self.base ** (
            torch.arange(0, self.rotary_dim, 2, device=device, dtype=torch.float32) / self.rotary_dim)
        angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        self._cos, self._sin = angles.cos(), angles.sin()

    def cos_sin(self, positions: Int[Tensor, "batch seq"]
                ) -> tuple[Float[Tensor, "batch 1 seq rot"], Float[Tensor, "batch 1 seq rot"]]:
        """fp32 tables gathered at `positions`, extended (doubling) when a position is past the end."""
        last = self._last
        if last is not None and last[0] is positions and last[1] == positions._version:
            return last[2], last[3]
        needed = int(positions.max()) + 1 if positions.numel() else 0
        if self._cos is None or self._cos.device != positions.device or needed > self._cos.size(0):
            length = max(min(self.max_len, _FIRST_TABLE), needed)  # max_len may come from an untrusted config
            if self._cos is not None and needed > self._cos.size(0):
                length = max(length, 2 * self._cos.size(0))
            self._build(length, positions.device)
        assert self._cos is not None and self._sin is not None
        cos, sin = self._cos[positions].unsqueeze(1), self._sin[positions].unsqueeze(1)
        self._last = (positions, positions._version, cos, sin)
        return cos, sin

    def forward(self, x: Float[Tensor, "batch heads seq head_dim"],
                positions: Int[Tensor, "batch seq"]) -> Float[Tensor, "batch heads seq head_dim"]:
        cos, sin = self.cos_sin(positions)
        rot = x[..., : self.rotary_dim].float()
        rotated = (rot * cos + rotate_half(rot) * sin).to(x.dtype)
        if self.rotary_dim == self.head_dim:
            return rotated
        return torch.cat((rotated, x[..., self.rotary_dim:]), dim=-1)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, base={self.base}"
