"""Activation checkpointing (`trainer.activation_checkpointing`): memory for compute, the same
gradients."""

from __future__ import annotations

import functools

import torch

from .config import ConfigError
from .distributed import transformer_blocks


def checkpoint_activations(model: torch.nn.Module) -> int:
    """Recompute every transformer block's activations in the backward pass instead of storing
    them (the blocks are the entries of the model's `layers`/`blocks` ModuleList). The module
    tree and state dict are unchanged. Returns the number of blocks wrapped."""
    from torch.utils.checkpoint import checkpoint

    blocks = transformer_blocks(model)
    if not blocks:
        raise ConfigError(f"trainer.activation_checkpointing: {type(model).__name__} has no `layers` or `blocks` "
                          f"ModuleList to checkpoint; set trainer.activation_checkpointing=false for it")
    for block in blocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
    return len(blocks)
