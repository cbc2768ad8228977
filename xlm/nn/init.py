"""The GPT-2/BERT weight init that the transformer families share."""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import nn

from .transformer_block import TransformerBlock


def init_transformer_weights(model: nn.Module, *, std: float, blocks: Iterable[TransformerBlock] = ()) -> None:
    """N(0, std) for every linear and embedding weight, zero biases, unit norms; then the residual
    output projections of `blocks` (attention out and FFN down) get std / sqrt(2 * len(blocks)), so
    the pre-LN residual stream does not grow with depth (GPT-2). Pass no blocks for BERT's post-LN.
    An embedding's `padding_idx` row starts at zero, as torch's init (which xlm-core keeps) has it; its
    lookup sends that row no gradient."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            module.reset_parameters()
    blocks = list(blocks)
    if blocks:
        residual_std = std / math.sqrt(2 * len(blocks))
        for block in blocks:
            nn.init.normal_(block.attn.out_proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.ffn.down_proj.weight, mean=0.0, std=residual_std)
    for module in model.modules():  # last: a head tied to the table has drawn its weights again
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])
