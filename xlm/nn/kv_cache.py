"""Preallocated key/value cache for incremental decoding.

Layers write their new keys/values at the current length; the model advances the length once
after the whole forward, so every layer of one step writes at the same offset.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


class KVCache:
    def __init__(self, *, num_layers: int, batch_size: int, num_kv_heads: int, head_dim: int,
                 max_len: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.batch_size = batch_size
        self.max_len = max_len
        self.length = 0

    def update(self, layer_idx: int, k_new: Float[Tensor, "batch kv_heads new head_dim"],
               v_new: Float[Tensor, "batch kv_heads new head_dim"],
               ) -> tuple[Float[Tensor, "batch kv_heads total head_dim"],
                          Float[Tensor, "batch kv_heads total head_dim"]]:
        """Store the new keys/values after the filled prefix; return views of prefix + new."""
        if k_new.size(0) != self.batch_size:
            raise ValueError(f"KVCache was built for batch_size={self.batch_size}, got {k_new.size(0)}")
        end = self.length + k_new.size(2)
        if end > self.max_len:
            raise ValueError(f"KVCache overflow: {self.length} cached + {k_new.size(2)} new positions "
                             f"exceed max_len={self.max_len}; build the cache with a larger max_len")
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[:, :, self.length:end] = k_new
        values[:, :, self.length:end] = v_new
        return keys[:, :, :end], values[:, :, :end]

    def advance(self, num_new: int) -> None:
        """Mark `num_new` more positions as filled (called once per model forward)."""
        if self.length + num_new > self.max_len:
            raise ValueError(f"KVCache overflow: cannot advance {self.length} by {num_new} past max_len={self.max_len}")
        self.length += num_new
