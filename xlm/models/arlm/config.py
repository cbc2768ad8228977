"""ARLM configuration and named architectures.

Fields use plain `str` (not Literal) so OmegaConf structured configs accept them; values are
checked in `__post_init__`. Derived sizes are properties, so `dataclasses.replace` stays consistent.

`attn_bias` and `padding_idx` default to None (attention biases as `bias` says, a gradient into every
embedding row): how every xlm model was built before they existed, so run dirs written then load as
they were. xlm-core's converter sets them to its layout: no attention biases, no gradient into [PAD]'s row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xlm.nn.config_checks import check_choices, check_ffn_init_and_padding, check_transformer
from xlm.nn.feed_forward import ACTIVATIONS
from xlm.nn.norm import NORMS
from xlm.registry import ArchRegistry

POS_ENCODINGS = ("rope", "learned")


@dataclass(kw_only=True)
class ArlmConfig:
    vocab_size: int
    model_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    num_kv_heads: int | None = None  # None = num_heads (no GQA)
    ffn_dim: int | None = None  # None = 4 * model_dim (swiglu: 8/3 * model_dim rounded up to a multiple of 64)
    max_seq_len: int = 1024
    pos_encoding: str = "rope"  # "rope" | "learned" (learned = GPT-2 wpe)
    rope_base: float = 10000.0
    rotary_dim: int | None = None  # None = full head dim
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    norm_eps: float = 1e-5
    activation: str = "gelu"  # "gelu" | "gelu_tanh" | "swiglu" | "relu"
    bias: bool = True  # biases in the MLP linears and layernorms (and attention, unless attn_bias says); Llama no
    attn_bias: bool | None = None  # biases in the attention projections; None = as `bias` (xlm-core: False)
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    pad_token_id: int = 0
    padding_idx: int | None = None  # the embedding row its lookup sends no gradient (xlm-core: [PAD]'s)

    def __post_init__(self) -> None:
        check_transformer(self)
        check_ffn_init_and_padding(self)
        check_choices(self, {"pos_encoding": POS_ENCODINGS, "norm": NORMS, "activation": ACTIVATIONS})
        if self.num_kv_heads is not None and (self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads):
            raise ValueError(f"num_kv_heads={self.num_kv_heads} does not divide num_heads={self.num_heads}")
        if self.rotary_dim is not None:
            if self.pos_encoding != "rope":
                raise ValueError(f"rotary_dim only applies to pos_encoding='rope', got {self.pos_encoding!r}")
            if self.rotary_dim < 2 or self.rotary_dim % 2 or self.rotary_dim > self.head_dim:
                raise ValueError(f"rotary_dim must be even and in [2, head_dim={self.head_dim}], got {self.rotary_dim}")

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def hidden_ffn_dim(self) -> int:
        """`ffn_dim`, or the default that keeps the MLP near 8 * model_dim**2 parameters."""
        if self.ffn_dim is not None:
            return self.ffn_dim
        if self.activation == "swiglu":
            return 64 * math.ceil(int(8 * self.model_dim / 3) / 64)
        return 4 * self.model_dim


arlm_archs = ArchRegistry[ArlmConfig]("arlm")
arlm_arch = arlm_archs.decorator


@arlm_arch("arlm_tiny")
def arlm_tiny() -> ArlmConfig:
    """For tests: builds and runs in milliseconds."""
    return ArlmConfig(vocab_size=128, model_dim=32, num_layers=2, num_heads=2, ffn_dim=64, max_seq_len=256)


@arlm_arch("arlm_star")
def arlm_star() -> ArlmConfig:
    """Learns the star-graph tasks on a 2-core CPU in a few minutes."""
    return ArlmConfig(vocab_size=128, model_dim=128, num_layers=4, num_heads=4, ffn_dim=512, max_seq_len=256,
                      pos_encoding="rope")


@arlm_arch("arlm_star_xlmcore")
def arlm_star_xlmcore() -> ArlmConfig:
    """xlm-core's star size (about 85M parameters: 768 wide, 12 layers, 12 heads), for the paper-scale comparison on
    a GPU; the recipe settings are configs/arch/arlm_star_xlmcore.yaml."""
    return ArlmConfig(vocab_size=128, model_dim=768, num_layers=12, num_heads=12, ffn_dim=3072, max_seq_len=256,
                      pos_encoding="rope")


@arlm_arch("arlm_small")
def arlm_small() -> ArlmConfig:
    """GPT-2 small (124M): same shapes, so GPT-2 checkpoints load one-to-one."""
    return ArlmConfig(vocab_size=50257, model_dim=768, num_layers=12, num_heads=12, ffn_dim=3072, max_seq_len=1024,
                      pos_encoding="learned", norm="layernorm", norm_eps=1e-5, activation="gelu_tanh", bias=True,
                      tie_embeddings=True)


@arlm_arch("arlm_base")
def arlm_base() -> ArlmConfig:
    """Llama-style decoder at GPT-2-medium depth/width: RoPE, RMSNorm, SwiGLU (ffn 2752), no biases, untied."""
    return ArlmConfig(vocab_size=50257, model_dim=1024, num_layers=24, num_heads=16, max_seq_len=2048,
                      pos_encoding="rope", norm="rmsnorm", norm_eps=1e-6, activation="swiglu", bias=False,
                      tie_embeddings=False)
