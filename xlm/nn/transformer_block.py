"""Pre-LN transformer block: x + attn(norm(x)), then x + ffn(norm(x))."""

from __future__ import annotations

from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from .attention import MultiheadAttention, attention_bias
from .feed_forward import FeedForward
from .kv_cache import KVCache
from .norm import make_norm
from .rope import RotaryEmbedding


class TransformerBlock(nn.Module):
    """`dropout` applies to attention probabilities and to both residual branches (as GPT-2). `bias` is for the
    MLP and the norms, `attn_bias` for the attention projections (None = `bias`): xlm-core's layer has the former
    and not the latter."""

    def __init__(self, *, dim: int, num_heads: int, num_kv_heads: int | None = None, ffn_dim: int,
                 activation: str = "gelu", norm: str = "layernorm", norm_eps: float = 1e-5, bias: bool = True,
                 attn_bias: bool | None = None, causal: bool = True, rope: RotaryEmbedding | None = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.attn_norm = make_norm(norm, dim, norm_eps, bias=bias)
        self.attn = MultiheadAttention(dim, num_heads, num_kv_heads=num_kv_heads, bias=attention_bias(bias, attn_bias),
                                       causal=causal, rope=rope, dropout=dropout)
        self.ffn_norm = make_norm(norm, dim, norm_eps, bias=bias)
        self.ffn = FeedForward(dim, ffn_dim, activation=activation, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Float[Tensor, "batch seq dim"], *, positions: Int[Tensor, "batch seq"] | None = None,
                key_padding_mask: Bool[Tensor, "batch total"] | None = None, kv_cache: KVCache | None = None,
                layer_idx: int = 0,
                attn_mask: Bool[Tensor, "batch 1 seq total"] | None = None) -> Float[Tensor, "batch seq dim"]:
        attended = self.attn(self.attn_norm(x), positions=positions, key_padding_mask=key_padding_mask,
                             kv_cache=kv_cache, layer_idx=layer_idx, attn_mask=attn_mask)
        x = x + self._residual_dropout(attended)
        return x + self._residual_dropout(self.ffn(self.ffn_norm(x)))

    def _residual_dropout(self, x: Tensor) -> Tensor:
        # skipped where it is the identity: a module call per branch is measurable in a decoding step
        return self.dropout(x) if self.training and self.dropout.p > 0 else x
