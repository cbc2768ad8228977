"""Autoregressive (causal) transformer LM built from the shared pre-LN blocks."""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from xlm.nn import (KVCache, LMHead, RotaryEmbedding, TransformerBlock, attention_mask_for, init_transformer_weights,
                    make_norm, select_positions)

from .config import ArlmConfig


class ArlmModel(nn.Module):
    def __init__(self, config: ArlmConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.model_dim
        self.embed_tokens = nn.Embedding(config.vocab_size, dim, padding_idx=config.padding_idx)
        self.embed_positions = nn.Embedding(config.max_seq_len, dim) if config.pos_encoding == "learned" else None
        self.dropout = nn.Dropout(config.dropout)
        rope = None
        if config.pos_encoding == "rope":
            rope = RotaryEmbedding(config.head_dim, rotary_dim=config.rotary_dim, base=config.rope_base,
                                   max_len=config.max_seq_len)
        self.layers = nn.ModuleList(
            TransformerBlock(dim=dim, num_heads=config.num_heads, num_kv_heads=config.kv_heads,
                             ffn_dim=config.hidden_ffn_dim, activation=config.activation, norm=config.norm,
                             norm_eps=config.norm_eps, bias=config.bias, attn_bias=config.attn_bias, causal=True,
                             rope=rope, dropout=config.dropout)
            for _ in range(config.num_layers))
        self.final_norm = make_norm(config.norm, dim, config.norm_eps, bias=config.bias)
        self.lm_head = LMHead(dim, config.vocab_size)
        if config.tie_embeddings:
            self.lm_head.tie_to(self.embed_tokens)
        init_transformer_weights(self, std=self.config.init_std, blocks=self.layers)

    def hidden_states(self, input_ids: Int[Tensor, "batch seq"], *,
                      attention_mask: Bool[Tensor, "batch total"] | None = None,
                      positions: Int[Tensor, "batch seq"] | None = None,
                      kv_cache: KVCache | None = None) -> Float[Tensor, "batch seq dim"]:
        """Final-norm hidden states. `attention_mask` (True = real token) covers cached + new tokens;
        positions default to the count of real tokens before each one, so left padding is harmless."""
        batch, seq = input_ids.shape
        past = kv_cache.length if kv_cache is not None else 0
        if attention_mask is not None and attention_mask.shape != (batch, past + seq):
            raise ValueError(f"attention_mask must have shape {(batch, past + seq)} (cached + new tokens), "
                             f"got {tuple(attention_mask.shape)}")
        if positions is None:
            if attention_mask is not None:
                positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq:]
            else:
                positions = (past + torch.arange(seq, device=input_ids.device)).expand(batch, seq)
        x = self.embed_tokens(input_ids)
        if self.embed_positions is not None:
            if positions.numel() and int(positions.max()) >= self.config.max_seq_len:
                raise ValueError(f"position {int(positions.max())} is beyond max_seq_len={self.config.max_seq_len} "
                                 "of the learned position embedding")
            x = x + self.embed_positions(positions)
        x = self.dropout(x)
        attn_mask = attention_mask_for(batch_size=batch, num_queries=seq, past=past, causal=True,
                                       key_padding_mask=attention_mask, device=input_ids.device)
        for idx, layer in enumerate(self.layers):
            x = layer(x, positions=positions, kv_cache=kv_cache, layer_idx=idx, attn_mask=attn_mask)
        if kv_cache is not None:
            kv_cache.advance(seq)
        return self.final_norm(x)

    def logits(self, hidden: Float[Tensor, "batch seq dim"]) -> Float[Tensor, "batch seq vocab"]:
        return self.lm_head(hidden)

    def forward(self, input_ids: Int[Tensor, "batch seq"], *,
                attention_mask: Bool[Tensor, "batch total"] | None = None,
                positions: Int[Tensor, "batch seq"] | None = None,
                kv_cache: KVCache | None = None,
                output_positions: Bool[Tensor, "batch seq"] | None = None,
                ) -> Float[Tensor, "batch seq vocab"] | Float[Tensor, "selected vocab"]:
        """Logits at every position, or, given `output_positions`, only where it is True, flattened in
        row-major order: a seq2seq loss scores the target tokens only, and the head is the largest
        matmul when the vocabulary is big."""
        hidden = self.hidden_states(input_ids, attention_mask=attention_mask, positions=positions, kv_cache=kv_cache)
        return self.logits(select_positions(hidden, output_positions))

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty cache on the parameters' device and dtype; max_len defaults to max_seq_len."""
        weight = self.embed_tokens.weight
        return KVCache(num_layers=self.config.num_layers, batch_size=batch_size, num_kv_heads=self.config.kv_heads,
                       head_dim=self.config.head_dim, max_len=max_len or self.config.max_seq_len,
                       device=weight.device, dtype=weight.dtype)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Unique parameters; `non_embedding` drops the token/position tables and an untied output head."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.embed_tokens.weight.numel()
            if self.embed_positions is not None:
                total -= self.embed_positions.weight.numel()
            if not self.lm_head.is_tied_to(self.embed_tokens):
                total -= self.lm_head.proj.weight.numel()
        return total
