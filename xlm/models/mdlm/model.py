"""The diffusion transformer (DiT) of MDLM, laid out like the reference's `models/dit.py`.

Module tree (so reference checkpoints convert with a key map):

    vocab_embed                      token table (reference: vocab_embed.embedding)
    sigma_map.mlp.{0,2}              sinusoidal features of sigma -> cond_dim MLP (SiLU between)
    blocks.i.norm1 / norm2           LayerNorm with a weight and no bias, computed in fp32
    blocks.i.attn_qkv / attn_out     fused q|k|v projection and output projection, no biases
    blocks.i.mlp.{up,down}_proj      GELU (tanh) MLP with biases (reference: mlp.0 / mlp.2)
    blocks.i.adaLN_modulation        cond -> shift/scale/gate for attention and MLP, zero-initialised
    output_layer.norm_final / linear / adaLN_modulation   the linear and modulation zero-initialised

Rotary embeddings rotate the two halves of each head (GPT-NeoX convention, as flash-attn's
non-interleaved kernel the reference calls), or of its first `rotary_dim` dims. Attention is
bidirectional; a padding mask only hides left padding of prompts.

xlm-core's DDiT is the same network but for the options the config carries: its attention branch is
added to the modulated, normalised input (`residual="modulated_input"`), its MLP may be ReLU and of
any width, its rotary may cover part of a head, its vocabulary projection has no bias, and it drops
attention probabilities while training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from xlm.nn import FeedForward, RotaryEmbedding, build_attention_mask, init_transformer_weights, make_norm

from .config import MdlmConfig


def modulate(x: Float[Tensor, "batch seq dim"], shift: Float[Tensor, "batch dim"],
             scale: Float[Tensor, "batch dim"]) -> Float[Tensor, "batch seq dim"]:
    """adaLN: one shift and scale per row, broadcast over the sequence."""
    return x * (1 + scale[:, None]) + shift[:, None]


class TimestepEmbedder(nn.Module):
    """sigma -> sinusoidal features (cos half, then sin half) -> two-layer SiLU MLP."""

    def __init__(self, cond_dim: int, freq_dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def sinusoidal(self, sigma: Float[Tensor, "batch"]) -> Float[Tensor, "batch freq"]:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(self.max_period)
                          * torch.arange(half, device=sigma.device, dtype=torch.float32) / half)
        angles = sigma.float()[:, None] * freqs[None]
        return torch.cat((angles.cos(), angles.sin()), dim=-1)

    def forward(self, sigma: Float[Tensor, "batch"]) -> Float[Tensor, "batch cond"]:
        features = self.sinusoidal(sigma)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class DDiTBlock(nn.Module):
    """Pre-norm block whose norms are shifted/scaled and whose residual branches are gated by
    the conditioning. The attention branch is added to the block's input, or with `residual`
    "modulated_input" to the normalised, modulated input it read (xlm-core's DDiTLayer); with
    zero-initialised modulation the first kind starts as the identity."""

    def __init__(self, *, dim: int, num_heads: int, cond_dim: int, ffn_dim: int, activation: str, residual: str,
                 norm_eps: float, dropout: float, attention_dropout: float, rope: RotaryEmbedding) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.rope = rope
        self.residual_is_modulated = residual == "modulated_input"
        self.attention_dropout = attention_dropout
        self.norm1 = make_norm("layernorm", dim, norm_eps, bias=False)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.norm2 = make_norm("layernorm", dim, norm_eps, bias=False)
        self.mlp = FeedForward(dim, ffn_dim, activation=activation, bias=True)
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * dim)
        self.dropout = nn.Dropout(dropout)

    def attention(self, x: Float[Tensor, "batch seq dim"], positions: Int[Tensor, "batch seq"],
                  attn_mask: Bool[Tensor, "batch 1 seq seq"] | None) -> Float[Tensor, "batch seq dim"]:
        batch, seq, dim = x.shape
        # the fused projection is laid out (q | k | v), each heads x head_dim
        qkv = self.attn_qkv(x).view(batch, seq, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = self.rope(qkv[0], positions), self.rope(qkv[1], positions), qkv[2]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.attention_dropout if self.training else 0.0)
        return self.attn_out(out.transpose(1, 2).reshape(batch, seq, dim))

    def forward(self, x: Float[Tensor, "batch seq dim"], c: Float[Tensor, "batch cond"], *,
                positions: Int[Tensor, "batch seq"],
                attn_mask: Bool[Tensor, "batch 1 seq seq"] | None) -> Float[Tensor, "batch seq dim"]:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        normed = modulate(self.norm1(x), shift_msa, scale_msa).to(x.dtype)
        attended = self.attention(normed, positions, attn_mask)
        x = (normed if self.residual_is_modulated else x) + gate_msa[:, None] * self.dropout(attended)
        hidden = self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp).to(x.dtype))
        return x + gate_mlp[:, None] * self.dropout(hidden)


class DDiTFinalLayer(nn.Module):
    def __init__(self, *, dim: int, vocab_size: int, cond_dim: int, norm_eps: float, bias: bool) -> None:
        super().__init__()
        self.norm_final = make_norm("layernorm", dim, norm_eps, bias=False)
        self.linear = nn.Linear(dim, vocab_size, bias=bias)
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * dim)

    def forward(self, x: Float[Tensor, "batch seq dim"], c: Float[Tensor, "batch cond"],
                output_positions: Bool[Tensor, "batch seq"] | None = None) -> Float[Tensor, "... vocab"]:
        """The modulation is per row, so it is applied before keeping only `output_positions`:
        the vocab projection, the costly part, then runs on those positions alone."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        hidden = modulate(self.norm_final(x), shift, scale).to(x.dtype)
        if output_positions is not None:
            hidden = hidden[output_positions]
        return self.linear(hidden)


class MdlmModel(nn.Module):
    def __init__(self, config: MdlmConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.model_dim
        self.vocab_embed = nn.Embedding(config.vocab_size, dim)
        self.sigma_map = TimestepEmbedder(config.cond_dim, config.sigma_embed_dim)
        self.rotary_emb = RotaryEmbedding(config.head_dim, rotary_dim=config.rotary_dim, base=config.rope_base,
                                          max_len=config.max_seq_len)
        self.blocks = nn.ModuleList(
            DDiTBlock(dim=dim, num_heads=config.num_heads, cond_dim=config.cond_dim, ffn_dim=config.hidden_ffn_dim,
                      activation=config.activation, residual=config.residual, norm_eps=config.norm_eps,
                      dropout=config.dropout, attention_dropout=config.attention_dropout, rope=self.rotary_emb)
            for _ in range(config.num_layers))
        self.output_layer = DDiTFinalLayer(dim=dim, vocab_size=config.vocab_size, cond_dim=config.cond_dim,
                                           norm_eps=config.norm_eps, bias=config.output_bias)
        self._init_weights()

    def _init_weights(self) -> None:
        """`init="reference"`, the reference's: torch defaults for the linears, U(+-1/sqrt(dim)) for the token
        table (its kaiming_uniform(a=sqrt 5)), zeros for every modulation and for the output projection, so
        a fresh model predicts uniformly (and with residual="block_input" is the identity per block).

        `init="normal"`: every linear and the table N(0, init_std) with zero biases, the blocks' residual
        projections N(0, init_std / sqrt(2 * num_layers)) (GPT-2), and the modulations' weights zero with
        each gate's bias 1, so a block starts as a pre-LN block whatever sigma is. On star_easy the DiT formed
        the edge lookup from this start and never from the reference's (docs/STAR.md)."""
        modulations = [block.adaLN_modulation for block in self.blocks] + [self.output_layer.adaLN_modulation]
        if self.config.init == "normal":
            self._init_normal(modulations)
            return
        bound = 1.0 / math.sqrt(self.config.model_dim)
        nn.init.uniform_(self.vocab_embed.weight, -bound, bound)
        for linear in modulations + [self.output_layer.linear]:
            nn.init.zeros_(linear.weight)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def _init_normal(self, modulations: list[nn.Linear]) -> None:
        std = self.config.init_std
        init_transformer_weights(self, std=std)
        residual_std = std / math.sqrt(2 * len(self.blocks))
        for block in self.blocks:
            nn.init.normal_(block.attn_out.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.down_proj.weight, mean=0.0, std=residual_std)
        for linear in modulations:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)
        dim = self.config.model_dim
        with torch.no_grad():
            for block in self.blocks:  # the chunks are shift, scale, gate for attention, then for the MLP
                block.adaLN_modulation.bias[2 * dim:3 * dim] = 1.0
                block.adaLN_modulation.bias[5 * dim:] = 1.0

    @property
    def time_conditioning(self) -> bool:
        """False: the output does not depend on sigma, so samplers may reuse it across steps."""
        return self.config.time_conditioning

    def _sigma(self, sigma: Float[Tensor, "batch"] | float, batch: int, device: torch.device) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=device)
        if sigma.ndim == 0:
            sigma = sigma.expand(batch)
        if sigma.shape != (batch,):
            raise ValueError(f"sigma must be a scalar or have shape ({batch},) (one per row), "
                             f"got {tuple(sigma.shape)}")
        return sigma if self.config.time_conditioning else torch.zeros_like(sigma)

    def forward(self, input_ids: Int[Tensor, "batch seq"], sigma: Float[Tensor, "batch"] | float, *,
                attention_mask: Bool[Tensor, "batch seq"] | None = None,
                output_positions: Bool[Tensor, "batch seq"] | None = None) -> Float[Tensor, "... vocab"]:
        """Logits over the vocabulary (the [MASK] entry included; the SUBS parameterisation is the
        caller's). With `output_positions` only those positions are projected, returned flattened
        in row-major order as (num_selected, vocab); otherwise (batch, seq, vocab).

        `attention_mask` (True = real token) hides padding from attention; rotary positions then
        count real tokens only, so left padding does not shift a row."""
        batch, seq = input_ids.shape
        if attention_mask is not None and attention_mask.shape != (batch, seq):
            raise ValueError(f"attention_mask must have the shape of input_ids {(batch, seq)}, "
                             f"got {tuple(attention_mask.shape)}")
        if output_positions is not None and output_positions.shape != (batch, seq):
            raise ValueError(f"output_positions must have the shape of input_ids {(batch, seq)}, "
                             f"got {tuple(output_positions.shape)}")
        sigma = self._sigma(sigma, batch, input_ids.device)
        attn_mask = None
        if attention_mask is None or bool(attention_mask.all()):
            positions = torch.arange(seq, device=input_ids.device).expand(batch, seq)
        else:
            attention_mask = attention_mask.bool()
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            attn_mask = build_attention_mask(batch_size=batch, num_queries=seq, num_keys=seq, past=0, causal=False,
                                             key_padding_mask=attention_mask, device=input_ids.device)
        x = self.vocab_embed(input_ids)
        c = F.silu(self.sigma_map(sigma))
        for block in self.blocks:
            x = block(x, c, positions=positions, attn_mask=attn_mask)
        return self.output_layer(x, c, output_positions)
