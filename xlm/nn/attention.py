"""Multi-head attention with grouped-query heads, optional RoPE and a KV cache.

One module serves causal decoders (ARLM) and bidirectional encoders (masked, insertion and
diffusion families, `causal=False`); separate q/k/v/out projections keep checkpoint key maps
(GPT-2, Llama, BERT) one-to-one. `project_qkv` is the one place q, k and v are computed, so the
CPU fast paths of `xlm.nn.cpu` (one matmul for all three) can replace it from outside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from .kv_cache import KVCache
from .rope import RotaryEmbedding


def build_attention_mask(*, batch_size: int, num_queries: int, num_keys: int, past: int, causal: bool,
                         key_padding_mask: Bool[Tensor, "batch keys"] | None,
                         device: torch.device) -> Bool[Tensor, "batch 1 queries keys"]:
    """True = may attend. Query i sits at key index past + i. A query row with no visible key
    (a left-pad query under a causal mask) attends to itself so softmax gives no NaN."""
    query_idx = past + torch.arange(num_queries, device=device)[:, None]
    key_idx = torch.arange(num_keys, device=device)[None, :]
    mask = torch.ones(batch_size, 1, num_queries, num_keys, dtype=torch.bool, device=device)
    if causal:
        mask = mask & (key_idx <= query_idx)
    if key_padding_mask is not None:
        mask = mask & key_padding_mask[:, None, None, :].bool()
    blind = ~mask.any(dim=-1, keepdim=True)
    return mask | (blind & (key_idx == query_idx))


def attention_mask_for(*, batch_size: int, num_queries: int, past: int, causal: bool,
                       key_padding_mask: Bool[Tensor, "batch keys"] | None,
                       device: torch.device) -> Bool[Tensor, "batch 1 queries keys"] | None:
    """The mask SDPA needs, or None where none is needed: no padding and either a square causal or
    bidirectional pattern (SDPA's `is_causal` covers it) or a single cached-decoding query that sees
    every key. Models call this once per forward and hand the result to every layer."""
    num_keys = past + num_queries
    if key_padding_mask is not None:
        if key_padding_mask.shape != (batch_size, num_keys):
            raise ValueError(f"key_padding_mask must have shape {(batch_size, num_keys)} (cached + new), "
                             f"got {tuple(key_padding_mask.shape)}")
        if bool(key_padding_mask.all()):
            key_padding_mask = None
    if key_padding_mask is None and (past == 0 or num_queries == 1 or not causal):
        return None
    return build_attention_mask(batch_size=batch_size, num_queries=num_queries, num_keys=num_keys, past=past,
                                causal=causal, key_padding_mask=key_padding_mask, device=device)


def attention_bias(bias: bool, attn_bias: bool | None) -> bool:
    """Whether the attention projections have biases: `attn_bias`, or the configs' `bias` where it is None
    (so configs written before attention had a switch of its own build as they did)."""
    return bias if attn_bias is None else attn_bias


class MultiheadAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, *, num_kv_heads: int | None = None, bias: bool = True,
                 causal: bool = True, rope: RotaryEmbedding | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} does not divide dim={dim}")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads={num_kv_heads} does not divide num_heads={num_heads}")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = dim // num_heads
        self.causal = causal
        self.dropout = dropout
        self.rope = rope
        self.q_proj = nn.Linear(dim, num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(dim, num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(dim, num_kv_heads * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(num_heads * self.head_dim, dim, bias=bias)

    def project_qkv(self, x: Float[Tensor, "batch seq dim"]) -> tuple[Tensor, Tensor, Tensor]:
        """q, k and v, each through its own projection module (so hooks and wrappers see every call)."""
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def _split_heads(self, x: Tensor, heads: int) -> Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Float[Tensor, "batch seq dim"], *, positions: Int[Tensor, "batch seq"] | None = None,
                key_padding_mask: Bool[Tensor, "batch total"] | None = None, kv_cache: KVCache | None = None,
                layer_idx: int = 0,
                attn_mask: Bool[Tensor, "batch 1 seq total"] | None = None) -> Float[Tensor, "batch seq dim"]:
        """`key_padding_mask` (True = real token) covers cached + new keys; `attn_mask` is the same
        mask prebuilt by `attention_mask_for` (pass one or the other); `positions` default to
        past + arange(seq) and only feed RoPE."""
        batch, seq, _ = x.shape
        past = kv_cache.length if kv_cache is not None else 0
        q, k, v = self.project_qkv(x)
        q, k, v = (self._split_heads(q, self.num_heads), self._split_heads(k, self.num_kv_heads),
                   self._split_heads(v, self.num_kv_heads))
        if self.rope is not None:
            if positions is None:
                positions = (past + torch.arange(seq, device=x.device)).expand(batch, seq)
            q, k = self.rope(q, positions), self.rope(k, positions)
        if kv_cache is not None:
            k, v = kv_cache.update(layer_idx, k, v)
        if self.num_kv_heads != self.num_heads:
            groups = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)

        if attn_mask is None:
            attn_mask = attention_mask_for(batch_size=batch, num_queries=seq, past=past, causal=self.causal,
                                           key_padding_mask=key_padding_mask, device=x.device)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal and attn_mask is None and k.size(2) == seq)
        return self.out_proj(out.transpose(1, 2).reshape(batch, seq, -1))
