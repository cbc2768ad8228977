"""ILM configuration and named architectures.

The network follows xlm-core's `RotaryTransformerILMModelWithStoppingClassification`: a
bidirectional pre-LN rotary encoder, token logits at every position (the gap after that token)
and a binary stopping classifier read at the [CLS] column. The flags that xlm-core varies
between checkpoints (final norm or none, untied output projection, partial rotary) are fields
here, so a converted checkpoint only needs a config and a key map (see `model.py`).
Fields are plain `str`/`int`/`float`/`bool` (OmegaConf), checked in `__post_init__`.

`attn_bias` and `padding_idx` default to None (attention biases as `bias` says, a gradient into every
embedding row): how every xlm model was built before they existed, so run dirs written then load as
they were. xlm-core's converter sets them to its layout: no attention biases, no gradient into [PAD]'s row.
"""

from __future__ import annotations

from dataclasses import dataclass

from xlm.nn.config_checks import check_choices, check_ffn_init_and_padding, check_transformer
from xlm.nn.feed_forward import ACTIVATIONS
from xlm.nn.norm import NORMS
from xlm.registry import ArchRegistry

INSERTION_GAPS = ("target", "attended")


@dataclass(kw_only=True)
class IlmConfig:
    vocab_size: int
    model_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    ffn_dim: int | None = None  # None = 4 * model_dim
    max_seq_len: int = 1024  # longest row: [CLS] + prompt + [BOS] + target
    rope_base: float = 10000.0
    rotary_dim: int | None = None  # dims of each head that are rotated; None = the whole head
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    norm_eps: float = 1e-5
    activation: str = "gelu"  # "gelu" | "gelu_tanh" | "swiglu" | "relu"
    bias: bool = True  # biases in the MLP linears and norms (and attention, unless attn_bias says)
    attn_bias: bool | None = None  # biases in the attention projections; None = as `bias` (xlm-core: False)
    final_norm: bool = True  # a norm before the token projection (xlm-core stopping models: none)
    tie_embeddings: bool = False  # xlm-core's output projection is its own matrix
    dropout: float = 0.0
    init_std: float = 0.02
    pad_token_id: int = 0
    padding_idx: int | None = None  # the embedding row its lookup sends no gradient (xlm-core: [PAD]'s)
    stop_loss_weight: float = 1.0  # loss = token_loss + stop_loss_weight * stop_loss
    # the loss's options for training as xlm-core does (loss.py has the maths); the defaults keep the likelihood's
    # terms over the gaps our sampler inserts into
    stopping_class_weight: float | None = None  # w on "stop" rows' stop loss, 1 - w on the others; None = 1 on both
    insertion_gaps: str = "target"  # "target" ([BOS] on) | "attended" (every attended column but [CLS]: xlm-core's)

    def __post_init__(self) -> None:
        check_transformer(self)
        check_ffn_init_and_padding(self)
        check_choices(self, {"norm": NORMS, "activation": ACTIVATIONS, "insertion_gaps": INSERTION_GAPS})
        rotary = self.head_dim if self.rotary_dim is None else self.rotary_dim
        if rotary < 2 or rotary % 2 or rotary > self.head_dim:
            raise ValueError(f"rotary_dim must be even and in [2, head_dim={self.head_dim}] (model_dim/num_heads), "
                             f"got {rotary}")
        if self.stop_loss_weight < 0:
            raise ValueError(f"stop_loss_weight must be >= 0, got {self.stop_loss_weight}")
        if self.stopping_class_weight is not None and not 0.0 <= self.stopping_class_weight <= 1.0:
            raise ValueError(f"stopping_class_weight must be in [0, 1] (or None: no class weights), got "
                             f"{self.stopping_class_weight}")

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def hidden_ffn_dim(self) -> int:
        return self.ffn_dim if self.ffn_dim is not None else 4 * self.model_dim


ilm_archs = ArchRegistry[IlmConfig]("ilm")
ilm_arch = ilm_archs.decorator


@ilm_arch("ilm_tiny")
def ilm_tiny() -> IlmConfig:
    """For tests: builds and runs in milliseconds."""
    return IlmConfig(vocab_size=128, model_dim=32, num_layers=2, num_heads=2, ffn_dim=64, max_seq_len=256)


@ilm_arch("ilm_star")
def ilm_star() -> IlmConfig:
    """The star-graph size shared with mlm_star/mdlm_star: pre-LN, rotary, 4 x 128."""
    return IlmConfig(vocab_size=128, model_dim=128, num_layers=4, num_heads=4, ffn_dim=512, max_seq_len=256)


@ilm_arch("ilm_star_long")
def ilm_star_long() -> IlmConfig:
    """ilm_star with the longer schedule that learnt star_easy on two seeds of three on a 2-core CPU (its climb needs a
    moderate rate for thousands of steps); the recipe settings are configs/arch/ilm_star_long.yaml."""
    return ilm_star()


@ilm_arch("ilm_star_xlmcore")
def ilm_star_xlmcore() -> IlmConfig:
    """xlm-core's star size (about 85M parameters: 768 wide, 12 layers, 12 heads), for the paper-scale comparison on
    a GPU; the recipe settings are configs/arch/ilm_star_xlmcore.yaml."""
    return IlmConfig(vocab_size=128, model_dim=768, num_layers=12, num_heads=12, ffn_dim=3072, max_seq_len=256)


@ilm_arch("ilm_small")
def ilm_small() -> IlmConfig:
    """GPT-2-small shapes (12 x 768, 12 heads, 1024 context) in xlm-core's ILM layout: ReLU FFN, no
    final norm, an untied output projection, dropout 0.1. The vocabulary is a placeholder (GPT-2's); a task or
    a converted checkpoint sets it."""
    return IlmConfig(vocab_size=50257, model_dim=768, num_layers=12, num_heads=12, ffn_dim=3072, max_seq_len=1024,
                     activation="relu", final_norm=False, tie_embeddings=False, dropout=0.1)
