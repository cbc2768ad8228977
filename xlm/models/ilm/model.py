"""Bidirectional rotary transformer with insertion logits and a stopping classifier.

Output at column i of a row: `token_logits[i, v]` scores inserting token v into the gap right
after the token at column i; the sampler and the loss normalise them jointly over every
(gap, token) pair of the row. `stop_logits` (2 classes, read at the [CLS] column: column 0,
or `cls_position` where a batch gives it) say whether anything remains to insert: class 0 = stop
(nothing missing), class 1 = continue, xlm-core's order. Columns may be in any order: positions
are explicit (RoPE), so the sampler appends inserted tokens at the end of the row and only updates
positions.

Layout and the intended map from xlm-core's `RotaryTransformerILMModelWithStoppingClassification`
(`xlm.lm.ilm.model_ilm`, e.g. the hub checkpoint dhruveshpatel/ilm-owt) to ours:

    xlm-core key                                  ours
    embed_tokens.weight                           embed_tokens.weight
    encoder.{i}.norm1.{weight,bias}               layers.{i}.attn_norm.{weight,bias}
    encoder.{i}.attn_qkv.weight  (3d x d)         layers.{i}.attn.{q,k,v}_proj.weight  (torch.chunk(3, dim=0))
      (no attention biases)                         (none either: attn_bias=False)
    encoder.{i}.o_proj.weight                     layers.{i}.attn.out_proj.weight
    encoder.{i}.norm2.{weight,bias}               layers.{i}.ffn_norm.{weight,bias}
    encoder.{i}.mlp.0.{weight,bias}               layers.{i}.ffn.up_proj.{weight,bias}
    encoder.{i}.mlp.2.{weight,bias}               layers.{i}.ffn.down_proj.{weight,bias}
    encoder.{i}.rotary_emb.inv_freq               (dropped: our RoPE tables are not in the state dict)
    output_layer.norm_final.{weight,bias}         final_norm.{weight,bias}  (only when the checkpoint has it,
                                                    i.e. final_layer_without_normalization=False; else final_norm=False)
    output_layer.linear.weight                    output_proj.weight
    length_output_layer.norm_final.{weight,bias}  stop_head.norm.{weight,bias}
    length_output_layer.mlp.0.{weight,bias}       stop_head.up_proj.{weight,bias}
    length_output_layer.mlp.2.{weight,bias}       stop_head.down_proj.{weight,bias}
    length_output_layer.linear.weight  (2 x d)    stop_head.proj.weight

Both use NeoX half-split RoPE with base 10000 over the first `rotary_emb_dim` (ours:
`rotary_dim`) dims of each head; the stop head reads the last block's output at the [CLS] column,
before the final norm, as xlm-core's does: column 0, or `cls_position` (xlm-core's prefix batches are
left-padded, [PAD]... [CLS] prompt [BOS], and say where [CLS] is). xlm-core's default FFN activation is ReLU
(`activation="relu"`); `interop.py` reads the checkpoint's.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from xlm.nn import RotaryEmbedding, TransformerBlock, attention_mask_for, init_transformer_weights, make_norm

from .config import IlmConfig

STOP, CONTINUE = 0, 1  # the stop head's classes


class IlmOutput(NamedTuple):
    token_logits: Float[Tensor, "batch seq vocab"]  # insertion scores: the gap after each column, each token
    stop_logits: Float[Tensor, "batch 2"]  # [stop, continue], read at the [CLS] column


class IlmStopHead(nn.Module):
    """xlm-core's classification head: x + dropout(mlp(norm(x))), then a bias-free projection; the
    MLP is d -> 2d -> d with a tanh in between."""

    def __init__(self, config: IlmConfig) -> None:
        super().__init__()
        dim = config.model_dim
        self.norm = make_norm(config.norm, dim, config.norm_eps, bias=config.bias)
        self.up_proj = nn.Linear(dim, 2 * dim)
        self.down_proj = nn.Linear(2 * dim, dim)
        self.proj = nn.Linear(dim, 2, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden: Float[Tensor, "batch dim"]) -> Float[Tensor, "batch 2"]:
        hidden = hidden + self.dropout(self.down_proj(torch.tanh(self.up_proj(self.norm(hidden)))))
        return self.proj(hidden)


class IlmModel(nn.Module):
    def __init__(self, config: IlmConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.model_dim
        self.embed_tokens = nn.Embedding(config.vocab_size, dim, padding_idx=config.padding_idx)
        self.dropout = nn.Dropout(config.dropout)
        rope = RotaryEmbedding(config.head_dim, rotary_dim=config.rotary_dim, base=config.rope_base,
                               max_len=config.max_seq_len)
        self.layers = nn.ModuleList(
            TransformerBlock(dim=dim, num_heads=config.num_heads, ffn_dim=config.hidden_ffn_dim,
                             activation=config.activation, norm=config.norm, norm_eps=config.norm_eps,
                             bias=config.bias, attn_bias=config.attn_bias, causal=False, rope=rope,
                             dropout=config.dropout)
            for _ in range(config.num_layers))
        self.final_norm = make_norm(config.norm, dim, config.norm_eps, bias=config.bias) if config.final_norm else None
        self.output_proj = nn.Linear(dim, config.vocab_size, bias=False)
        self.stop_head = IlmStopHead(config)
        init_transformer_weights(self, std=self.config.init_std, blocks=self.layers)
        if config.tie_embeddings:
            self.output_proj.weight = self.embed_tokens.weight

    def hidden_states(self, input_ids: Int[Tensor, "batch seq"], *,
                      attention_mask: Bool[Tensor, "batch seq"] | None = None,
                      positions: Int[Tensor, "batch seq"] | None = None) -> Float[Tensor, "batch seq dim"]:
        """The last block's output (before the final norm). `attention_mask` is True at real tokens;
        positions default to the number of real tokens before each one."""
        batch, seq = input_ids.shape
        for name, value in (("attention_mask", attention_mask), ("positions", positions)):
            if value is not None and value.shape != (batch, seq):
                raise ValueError(f"{name} must have the shape of input_ids {(batch, seq)}, got {tuple(value.shape)}")
        if positions is None:
            if attention_mask is not None:
                positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            else:
                positions = torch.arange(seq, device=input_ids.device).expand(batch, seq)
        x = self.dropout(self.embed_tokens(input_ids))
        attn_mask = attention_mask_for(batch_size=batch, num_queries=seq, past=0, causal=False,
                                       key_padding_mask=attention_mask, device=input_ids.device)
        for layer in self.layers:
            x = layer(x, positions=positions, attn_mask=attn_mask)
        return x

    def forward(self, input_ids: Int[Tensor, "batch seq"], *,
                attention_mask: Bool[Tensor, "batch seq"] | None = None,
                positions: Int[Tensor, "batch seq"] | None = None,
                cls_position: Int[Tensor, " batch"] | None = None) -> IlmOutput:
        """Insertion logits at every column and the stop logits at the [CLS] token: at column 0, or at
        `cls_position` (one column per row) where [CLS] is elsewhere."""
        hidden = self.hidden_states(input_ids, attention_mask=attention_mask, positions=positions)
        if cls_position is None:
            cls_hidden = hidden[:, 0]
        else:
            batch, seq = input_ids.shape
            if cls_position.shape != (batch,):
                raise ValueError(f"cls_position must have one column per row, shape ({batch},), "
                                 f"got {tuple(cls_position.shape)}")
            if cls_position.numel() and not (0 <= int(cls_position.min()) and int(cls_position.max()) < seq):
                raise ValueError(f"cls_position must be columns in [0, {seq}), got {cls_position.tolist()}")
            cls_hidden = hidden[torch.arange(batch, device=hidden.device), cls_position.to(hidden.device)]
        stop_logits = self.stop_head(cls_hidden)
        if self.final_norm is not None:
            hidden = self.final_norm(hidden)
        return IlmOutput(self.output_proj(hidden), stop_logits)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Unique parameters; `non_embedding` drops the embedding table and an untied output projection."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.embed_tokens.weight.numel()
            if self.output_proj.weight is not self.embed_tokens.weight:
                total -= self.output_proj.weight.numel()
        return total
