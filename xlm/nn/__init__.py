"""Building blocks shared by every model family."""

from .attention import MultiheadAttention, attention_bias, attention_mask_for, build_attention_mask
from .feed_forward import ACTIVATIONS, FeedForward
from .init import init_transformer_weights
from .kv_cache import KVCache
from .norm import NORMS, RMSNorm, make_norm
from .output_head import LMHead, select_positions, token_probs_at
from .rope import RotaryEmbedding, rotate_half
from .transformer_block import TransformerBlock

__all__ = [
    "ACTIVATIONS",
    "NORMS",
    "FeedForward",
    "KVCache",
    "LMHead",
    "MultiheadAttention",
    "RMSNorm",
    "RotaryEmbedding",
    "TransformerBlock",
    "attention_bias",
    "attention_mask_for",
    "build_attention_mask",
    "init_transformer_weights",
    "make_norm",
    "select_positions",
    "rotate_half",
    "token_probs_at",
]
