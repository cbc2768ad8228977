"""MLM configuration and named architectures.

One config covers both a modern pre-LN rotary encoder and HF BERT (post-LN, learned absolute
positions, token types, exact GELU, LayerNorm eps 1e-12, the dense+GELU+LayerNorm head
transform and a tied decoder with its own bias), so BERT checkpoints map onto `MlmModel`
key by key. Fields are plain `str`/`int` (OmegaConf), checked in `__post_init__`.

`attn_bias` and `padding_idx` default to None (attention biases as `bias` says, a gradient into every
embedding row): how every xlm model was built before they existed, so run dirs written then load as
they were. xlm-core's converter sets them to its layout: no attention biases, no gradient into [PAD]'s row.
"""

from __future__ import annotations

from dataclasses import dataclass

from xlm.nn.config_checks import check_choices, check_ffn_init_and_padding, check_transformer
from xlm.nn.feed_forward import ACTIVATIONS
from xlm.nn.loss_shaping import check_loss_shaping
from xlm.nn.norm import NORMS
from xlm.registry import ArchRegistry

POS_ENCODINGS = ("rope", "learned")
NORM_POSITIONS = ("pre", "post")
LOSS_WEIGHTINGS = ("none", "inverse_t", "num_masked_factor")


@dataclass(kw_only=True)
class MlmConfig:
    vocab_size: int
    model_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    ffn_dim: int | None = None  # None = 4 * model_dim
    max_seq_len: int = 512
    norm_position: str = "pre"  # "pre" (x + f(norm(x)), final norm) | "post" (BERT: norm(x + f(x)), embedding norm)
    pos_encoding: str = "rope"  # "rope" | "learned" (absolute, BERT)
    rope_base: float = 10000.0
    rotary_dim: int | None = None  # dims of each head that are rotated; None = the whole head
    type_vocab_size: int = 0  # token-type (segment) embeddings; 0 = none, BERT = 2
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    norm_eps: float = 1e-5
    activation: str = "gelu"  # "gelu" (exact, BERT) | "gelu_tanh" | "swiglu" | "relu"
    bias: bool = True  # biases in the MLP linears and layernorms (and attention, unless attn_bias says)
    attn_bias: bool | None = None  # biases in the attention projections; None = as `bias` (xlm-core: False)
    head_transform: bool = False  # BERT's dense + GELU + norm before the decoder
    head_bias: bool = False  # a bias on the decoder (BERT: yes)
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    pad_token_id: int = 0
    padding_idx: int | None = None  # the embedding row its lookup sends no gradient (xlm-core: [PAD]'s)
    # training objective (loss.py): each masked token weighs 1 ("none"), 1/t ("inverse_t", the masking ELBO) or
    # 1/(masked in its row + 1) ("num_masked_factor", xlm-core's use_num_masked_factor)
    loss_weighting: str = "none"
    # training only (xlm.nn.loss_shaping; evaluation reports the plain objective): each masked token's NLL times
    # (1 - p_right)^focal_gamma, and rows masked whole with a chance falling from whole_mask_prob to 0 at
    # whole_mask_steps (0: no decay)
    focal_gamma: float = 0.0
    whole_mask_prob: float = 0.0
    whole_mask_steps: int = 0
    mask_repeats: bool = False  # training: a token's repeats in a row masked together (whole-word masking by token)

    def __post_init__(self) -> None:
        check_transformer(self)
        check_loss_shaping(self)
        check_ffn_init_and_padding(self)
        check_choices(self, {"norm_position": NORM_POSITIONS, "pos_encoding": POS_ENCODINGS, "norm": NORMS,
                             "activation": ACTIVATIONS, "loss_weighting": LOSS_WEIGHTINGS})
        if self.pos_encoding == "rope" and self.rotary_dim is None and self.head_dim % 2:
            raise ValueError(f"rope needs an even head_dim, got model_dim/num_heads={self.head_dim}")
        if self.rotary_dim is not None:
            if self.pos_encoding != "rope":
                raise ValueError(f"rotary_dim only applies to pos_encoding='rope', got {self.pos_encoding!r}")
            if self.rotary_dim < 2 or self.rotary_dim % 2 or self.rotary_dim > self.head_dim:
                raise ValueError(f"rotary_dim must be even and in [2, head_dim={self.head_dim}], got {self.rotary_dim}")
        if self.type_vocab_size < 0:
            raise ValueError(f"type_vocab_size must be >= 0 (0 = no token types), got {self.type_vocab_size}")

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def hidden_ffn_dim(self) -> int:
        return self.ffn_dim if self.ffn_dim is not None else 4 * self.model_dim


mlm_archs = ArchRegistry[MlmConfig]("mlm")
mlm_arch = mlm_archs.decorator


@mlm_arch("mlm_tiny")
def mlm_tiny() -> MlmConfig:
    """For tests: builds and runs in milliseconds."""
    return MlmConfig(vocab_size=128, model_dim=32, num_layers=2, num_heads=2, ffn_dim=64, max_seq_len=256)


@mlm_arch("mlm_star")
def mlm_star() -> MlmConfig:
    """Learns the star-graph tasks on a 2-core CPU in a few minutes: pre-LN, rotary."""
    return MlmConfig(vocab_size=128, model_dim=128, num_layers=4, num_heads=4, ffn_dim=512, max_seq_len=256)


@mlm_arch("mlm_star_long")
def mlm_star_long() -> MlmConfig:
    """mlm_star with the budget that learns star_easy's edge lookup on a 2-core CPU (the lookup forms late and at a
    seed-dependent step); the recipe settings are configs/arch/mlm_star_long.yaml."""
    return mlm_star()


@mlm_arch("mlm_star_xlmcore")
def mlm_star_xlmcore() -> MlmConfig:
    """xlm-core's star size (about 85M parameters: 768 wide, 12 layers, 12 heads), for the paper-scale comparison on
    a GPU; the recipe settings are configs/arch/mlm_star_xlmcore.yaml."""
    return MlmConfig(vocab_size=128, model_dim=768, num_layers=12, num_heads=12, ffn_dim=3072, max_seq_len=256)


@mlm_arch("mlm_base")
def mlm_base() -> MlmConfig:
    """BERT-base (bert-base-uncased shapes and layout), so BERT checkpoints convert one-to-one."""
    return MlmConfig(vocab_size=30522, model_dim=768, num_layers=12, num_heads=12, ffn_dim=3072, max_seq_len=512,
                     norm_position="post", pos_encoding="learned", type_vocab_size=2, norm="layernorm",
                     norm_eps=1e-12, activation="gelu", bias=True, head_transform=True, head_bias=True,
                     tie_embeddings=True, dropout=0.1)
