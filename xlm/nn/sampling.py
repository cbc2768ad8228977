"""Token selection from logits: greedy, temperature, top-k, top-p.

Filters act on logits (masking to -inf), never on renormalised probabilities, so the
result is the same whatever order temperature and filtering are applied in.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor


def filter_logits(logits: Float[Tensor, "... vocab"], *, top_k: int | None = None,
                  top_p: float | None = None) -> Float[Tensor, "... vocab"]:
    """Keep the k most likely tokens and/or the smallest set with cumulative mass >= top_p."""
    if top_k is not None and top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the mass before it already reaches top_p (the top one always stays)
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def select_tokens(logits: Float[Tensor, "... vocab"], *, greedy: bool, temperature: float = 1.0,
                  top_k: int | None = None, top_p: float | None = None,
                  generator: torch.Generator | None = None) -> Int[Tensor, ...]:
    if greedy or temperature == 0.0:
        return logits.argmax(-1)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    filtered = filter_logits(logits.float() / temperature, top_k=top_k, top_p=top_p)
    probs = filtered.softmax(-1)
    flat = probs.reshape(-1, probs.size(-1))
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
