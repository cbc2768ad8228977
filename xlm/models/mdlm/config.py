"""MDLM configuration and named architectures.

The network is the DiT of Sahoo et al. (2024); the noise schedule and the training-time
draw of t live here too, because the loss, the samplers and a converted checkpoint must agree
on them. The defaults are the reference DiT (kuleshov-group/mdlm); `residual`, `activation`,
`rotary_dim`, `ffn_dim`, `output_bias` and `attention_dropout` let one model also compute
xlm-core's DDiT, which differs in those. Fields are plain types so OmegaConf structured configs
accept them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from xlm.nn.config_checks import check_at_least_one, check_choices, check_transformer
from xlm.nn.feed_forward import ACTIVATIONS
from xlm.nn.loss_shaping import check_loss_shaping
from xlm.registry import ArchRegistry

NOISE_SCHEDULES = ("loglinear", "cosine")
#: what a block's attention branch is added to: the block's input x (the reference DiT), or the
#: adaLN-modulated, normalised input modulate(norm1(x)) that the attention itself reads (xlm-core's DDiT)
RESIDUALS = ("block_input", "modulated_input")
#: training only: "elbo" weighs each masked token by sigma'(t)/expm1(sigma(t)) and divides by the noised positions
#: (the NELBO); "none" gives each masked token weight 1 and divides by the masked ones (MLM's objective), so a
#: row counts in proportion to how much of it is masked
LOSS_WEIGHTINGS = ("elbo", "none")
#: how a fresh network starts: "reference" (the reference DiT's adaLN-Zero: torch's default linears, a uniform token
#: table, every modulation and the output projection zero, so each block is the identity and the model predicts
#: uniformly) or "normal" (N(0, init_std) weights, GPT-2's 1/sqrt(2 * num_layers) on the residual projections, the
#: gates' bias 1 and shift/scale 0, so each block starts as a plain pre-LN block, as MLM's and ARLM's do)
INITS = ("reference", "normal")


@dataclass(kw_only=True)
class MdlmConfig:
    vocab_size: int
    max_seq_len: int = 1024
    model_dim: int = 768
    num_layers: int = 12
    num_heads: int = 12
    cond_dim: int = 128  # width of the sigma embedding that drives adaLN
    mlp_ratio: int = 4
    ffn_dim: int | None = None  # the MLP's width; None = mlp_ratio * model_dim
    activation: str = "gelu_tanh"  # the MLP's: "gelu_tanh" (reference), "relu" (xlm-core's default), "gelu", "swiglu"
    residual: str = "block_input"  # "block_input" (reference) | "modulated_input" (xlm-core), see RESIDUALS
    rotary_dim: int | None = None  # dims of each head that are rotated; None = the whole head
    output_bias: bool = True  # a bias on the vocabulary projection (xlm-core's has none)
    sigma_embed_dim: int = 256  # sinusoidal features of sigma fed to the sigma map
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    dropout: float = 0.0  # on both residual branches
    attention_dropout: float = 0.0  # on the attention probabilities (xlm-core: its dropout; the reference: none)
    # False: the network sees sigma = 0 whatever t is (the released mdlm-owt); this is what
    # lets the cached sampler reuse an output while the input has not changed
    time_conditioning: bool = False
    noise_schedule: str = "loglinear"  # "loglinear" | "cosine"
    noise_eps: float = 1e-3  # keeps sigma(1) finite: the schedule never masks with probability 1
    sampling_eps: float = 1e-3  # training draws t in [sampling_eps, 1]
    antithetic_sampling: bool = True  # one t per stratum of [0, 1) across the batch
    loss_weighting: str = "elbo"  # training only, see LOSS_WEIGHTINGS
    init: str = "reference"  # a fresh model's weights, see INITS (a loaded checkpoint replaces them)
    init_std: float = 0.02  # the "normal" init's standard deviation
    # training only (xlm.nn.loss_shaping; evaluation reports the plain NELBO): each masked token's weighted NLL
    # times (1 - p_right)^focal_gamma, on top of its ELBO weight sigma'(t)/expm1(sigma(t)), so the training loss
    # is no longer a bound; and rows masked whole (t = 1, ELBO weight 1 under loglinear) with a chance falling
    # from whole_mask_prob to 0 at whole_mask_steps (0: no decay)
    focal_gamma: float = 0.0
    whole_mask_prob: float = 0.0
    whole_mask_steps: int = 0
    mask_repeats: bool = False  # training: a token's repeats in a row masked together (whole-word masking by token)

    def __post_init__(self) -> None:
        check_transformer(self)
        check_at_least_one(self, "cond_dim", "mlp_ratio", "sigma_embed_dim")
        check_loss_shaping(self)
        if self.ffn_dim is not None and self.ffn_dim < 1:
            raise ValueError(f"ffn_dim must be >= 1 or None (mlp_ratio * model_dim), got {self.ffn_dim}")
        check_choices(self, {"activation": ACTIVATIONS, "residual": RESIDUALS, "noise_schedule": NOISE_SCHEDULES,
                             "loss_weighting": LOSS_WEIGHTINGS, "init": INITS})
        if self.init_std <= 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")
        rotary = self.head_dim if self.rotary_dim is None else self.rotary_dim
        if rotary < 2 or rotary % 2 or rotary > self.head_dim:
            raise ValueError(f"rotary_dim must be even and in [2, head_dim={self.head_dim}] (model_dim/num_heads; "
                             f"None = the whole head), got {rotary}")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {self.attention_dropout}")
        if self.sigma_embed_dim % 2:
            raise ValueError(f"sigma_embed_dim must be even (cos and sin halves), got {self.sigma_embed_dim}")
        if not 0.0 < self.noise_eps < 1.0:
            raise ValueError(f"noise_eps must be in (0, 1), got {self.noise_eps}")
        if not 0.0 < self.sampling_eps < 1.0:
            raise ValueError(f"sampling_eps must be in (0, 1) (t = 0 has zero loss weight times an "
                             f"infinite one), got {self.sampling_eps}")

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def hidden_ffn_dim(self) -> int:
        return self.ffn_dim if self.ffn_dim is not None else self.mlp_ratio * self.model_dim


mdlm_archs = ArchRegistry[MdlmConfig]("mdlm")
mdlm_arch = mdlm_archs.decorator


@mdlm_arch("mdlm_tiny")
def mdlm_tiny() -> MdlmConfig:
    """For tests: builds and runs in milliseconds."""
    return MdlmConfig(vocab_size=128, max_seq_len=256, model_dim=32, num_layers=2, num_heads=2, cond_dim=16,
                      sigma_embed_dim=32)


@mdlm_arch("mdlm_star")
def mdlm_star() -> MdlmConfig:
    """Learns the star-graph tasks on a 2-core CPU in a few minutes."""
    return MdlmConfig(vocab_size=128, max_seq_len=256, model_dim=128, num_layers=4, num_heads=4, cond_dim=64,
                      sigma_embed_dim=128)


@mdlm_arch("mdlm_star_long")
def mdlm_star_long() -> MdlmConfig:
    """mdlm_star with the "normal" init (gates open from the start) and the budget that learnt star_easy's edge
    lookup on a 2-core CPU; the recipe settings are configs/arch/mdlm_star_long.yaml."""
    return dataclasses.replace(mdlm_star(), init="normal")


@mdlm_arch("mdlm_star_xlmcore")
def mdlm_star_xlmcore() -> MdlmConfig:
    """xlm-core's star size (768 wide, 12 layers, 12 heads) as a DiT; xlm-core has no MDLM star recipe, so
    configs/arch/mdlm_star_xlmcore.yaml uses its MLM one."""
    return MdlmConfig(vocab_size=128, max_seq_len=256, model_dim=768, num_layers=12, num_heads=12, cond_dim=128,
                      sigma_embed_dim=256)


@mdlm_arch("mdlm_base")
def mdlm_base() -> MdlmConfig:
    """The paper's OpenWebText model (kuleshov-group/mdlm-owt): 12 blocks, 768 wide, 12 heads,
    cond dim 128, 1024 context, time-independent, dropout 0.1; vocab = GPT-2's 50257 + [MASK]."""
    return MdlmConfig(vocab_size=50258, max_seq_len=1024, model_dim=768, num_layers=12, num_heads=12,
                      cond_dim=128, sigma_embed_dim=256, dropout=0.1, time_conditioning=False)
