"""Bidirectional transformer encoder with a masked-LM head.

Pre-LN blocks come from `xlm.nn`; the post-LN (BERT) block lives here because only this
family needs it. Submodule names follow one scheme in both layouts (`attn`, `attn_norm`,
`ffn`, `ffn_norm`, `head.dense`, `head.norm`, `head.proj`), so a BERT key map is a rename.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from xlm.nn import (FeedForward, MultiheadAttention, RotaryEmbedding, TransformerBlock, attention_bias,
                    attention_mask_for, init_transformer_weights, make_norm, select_positions)

from .config import MlmConfig


class PostNormBlock(nn.Module):
    """BERT's layer: x = norm(x + attn(x)), then x = norm(x + ffn(x))."""

    def __init__(self, *, dim: int, num_heads: int, ffn_dim: int, activation: str, norm: str, norm_eps: float,
                 bias: bool, attn_bias: bool | None, rope: RotaryEmbedding | None, dropout: float) -> None:
        super().__init__()
        self.attn = MultiheadAttention(dim, num_heads, bias=attention_bias(bias, attn_bias), causal=False, rope=rope,
                                       dropout=dropout)
        self.attn_norm = make_norm(norm, dim, norm_eps, bias=bias)
        self.ffn = FeedForward(dim, ffn_dim, activation=activation, bias=bias)
        self.ffn_norm = make_norm(norm, dim, norm_eps, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Float[Tensor, "batch seq dim"], *, positions: Int[Tensor, "batch seq"] | None = None,
                attn_mask: Bool[Tensor, "batch 1 seq seq"] | None = None) -> Float[Tensor, "batch seq dim"]:
        x = self.attn_norm(x + self.dropout(self.attn(x, positions=positions, attn_mask=attn_mask)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class MlmHead(nn.Module):
    """Optional transform (dense + GELU + norm, as BERT), then the vocabulary projection."""

    def __init__(self, config: MlmConfig) -> None:
        super().__init__()
        dim = config.model_dim
        self.dense = nn.Linear(dim, dim, bias=config.bias) if config.head_transform else None
        self.norm = make_norm(config.norm, dim, config.norm_eps, bias=config.bias) if config.head_transform else None
        # the transform's GELU follows the FFN's flavour; swiglu FFNs get exact GELU here
        self.approximate = "tanh" if config.activation == "gelu_tanh" else "none"
        self.proj = nn.Linear(dim, config.vocab_size, bias=config.head_bias)

    def forward(self, hidden: Float[Tensor, "... dim"]) -> Float[Tensor, "... vocab"]:
        if self.dense is not None and self.norm is not None:
            hidden = self.norm(F.gelu(self.dense(hidden), approximate=self.approximate))
        return self.proj(hidden)


class MlmModel(nn.Module):
    def __init__(self, config: MlmConfig) -> None:
        super().__init__()
        self.config = config
        dim, post = config.model_dim, config.norm_position == "post"
        self.embed_tokens = nn.Embedding(config.vocab_size, dim, padding_idx=config.padding_idx)
        self.embed_positions = nn.Embedding(config.max_seq_len, dim) if config.pos_encoding == "learned" else None
        self.embed_token_types = nn.Embedding(config.type_vocab_size, dim) if config.type_vocab_size else None
        self.embed_norm = make_norm(config.norm, dim, config.norm_eps, bias=config.bias) if post else None
        self.dropout = nn.Dropout(config.dropout)
        rope = None
        if config.pos_encoding == "rope":
            rope = RotaryEmbedding(config.head_dim, rotary_dim=config.rotary_dim, base=config.rope_base,
                                   max_len=config.max_seq_len)
        block_args = dict(dim=dim, num_heads=config.num_heads, ffn_dim=config.hidden_ffn_dim,
                          activation=config.activation, norm=config.norm, norm_eps=config.norm_eps, bias=config.bias,
                          attn_bias=config.attn_bias, rope=rope, dropout=config.dropout)
        self.layers = nn.ModuleList(
            PostNormBlock(**block_args) if post else TransformerBlock(causal=False, **block_args)  # type: ignore[arg-type]
            for _ in range(config.num_layers))
        self.final_norm = None if post else make_norm(config.norm, dim, config.norm_eps, bias=config.bias)
        self.head = MlmHead(config)
        if config.tie_embeddings:
            self.head.proj.weight = self.embed_tokens.weight
        init_transformer_weights(self, std=self.config.init_std,
                                 blocks=() if post else self.layers)

    def hidden_states(self, input_ids: Int[Tensor, "batch seq"], *,
                      attention_mask: Bool[Tensor, "batch seq"] | None = None,
                      positions: Int[Tensor, "batch seq"] | None = None,
                      token_type_ids: Int[Tensor, "batch seq"] | None = None) -> Float[Tensor, "batch seq dim"]:
        """Encoder output. `attention_mask` is True at real tokens; positions default to the count of
        real tokens before each one, so a left-padded prompt starts at position 0."""
        batch, seq = input_ids.shape
        if attention_mask is not None and attention_mask.shape != (batch, seq):
            raise ValueError(f"attention_mask must have the shape of input_ids {(batch, seq)}, "
                             f"got {tuple(attention_mask.shape)}")
        if positions is None:
            if attention_mask is not None:
                positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            else:
                positions = torch.arange(seq, device=input_ids.device).expand(batch, seq)
        x = self.embed_tokens(input_ids)
        if self.embed_positions is not None:
            if positions.numel() and int(positions.max()) >= self.config.max_seq_len:
                raise ValueError(f"position {int(positions.max())} is beyond max_seq_len={self.config.max_seq_len} "
                                 "of the learned position embedding")
            x = x + self.embed_positions(positions)
        if self.embed_token_types is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.embed_token_types(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids were given but the model has no token-type embeddings "
                             "(type_vocab_size=0)")
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = self.dropout(x)
        attn_mask = attention_mask_for(batch_size=batch, num_queries=seq, past=0, causal=False,
                                       key_padding_mask=attention_mask, device=input_ids.device)
        for layer in self.layers:
            x = layer(x, positions=positions, attn_mask=attn_mask)
        return x if self.final_norm is None else self.final_norm(x)

    def forward(self, input_ids: Int[Tensor, "batch seq"], *,
                attention_mask: Bool[Tensor, "batch seq"] | None = None,
                positions: Int[Tensor, "batch seq"] | None = None,
                token_type_ids: Int[Tensor, "batch seq"] | None = None,
                output_positions: Bool[Tensor, "batch seq"] | None = None,
                ) -> Float[Tensor, "batch seq vocab"] | Float[Tensor, "selected vocab"]:
        """Logits at every position, or, given `output_positions`, only where it is True, flattened
        in row-major order: the MLM loss and the sampler need no more, and the head is the
        largest matmul when the vocabulary is big."""
        hidden = self.hidden_states(input_ids, attention_mask=attention_mask, positions=positions,
                                    token_type_ids=token_type_ids)
        return self.head(select_positions(hidden, output_positions))

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Unique parameters; `non_embedding` drops the embedding tables and an untied decoder."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            for table in (self.embed_tokens, self.embed_positions, self.embed_token_types):
                if table is not None:
                    total -= table.weight.numel()
            if self.head.proj.weight is not self.embed_tokens.weight:
                total -= self.head.proj.weight.numel()
        return total
