"""Language-model output projection, optionally tied to the token embedding.

Tying is plain parameter sharing (`proj.weight is embedding.weight`), so `state_dict` lists
both keys over one storage. `safetensors.torch.save_file` refuses shared tensors: save with
`safetensors.torch.save_model`/`load_model`, or drop the tied key before `save_file`.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn


def select_positions(hidden: Float[Tensor, "batch seq dim"],
                     output_positions: Bool[Tensor, "batch seq"] | None) -> Float[Tensor, "... dim"]:
    """All hidden states, or only those where `output_positions` is True, flattened in row-major
    order: losses and samplers that read a few positions skip the head everywhere else."""
    if output_positions is None:
        return hidden
    if output_positions.shape != hidden.shape[:2]:
        raise ValueError(f"output_positions must have the shape of input_ids {tuple(hidden.shape[:2])}, "
                         f"got {tuple(output_positions.shape)}")
    # index_select's backward is a scatter-add; boolean indexing's (index_put with accumulate) is slower
    return hidden.flatten(0, 1).index_select(0, output_positions.flatten().nonzero().squeeze(1))


def token_probs_at(logits: Float[Tensor, "selected vocab"], tokens: Int[Tensor, " selected"],
                   positions: Bool[Tensor, "batch seq"]) -> Float[Tensor, "batch seq"]:
    """The softmax probability of each `tokens` entry under its row of `logits` (read at `positions`,
    row-major, as `select_positions` reads them), laid back onto the batch grid; NaN wherever nothing was
    read. Probes read what a model puts on the right token this way (`xlm.data.tasks.star.probe_star`)."""
    probs = logits.float().softmax(-1).gather(-1, tokens.to(logits.device)[:, None]).squeeze(-1)
    grid = torch.full(positions.shape, float("nan"), device=probs.device)
    grid[positions.to(probs.device)] = probs
    return grid.cpu()


class LMHead(nn.Module):
    def __init__(self, dim: int, vocab_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, vocab_size, bias=False)

    def tie_to(self, embedding: nn.Embedding) -> None:
        self.proj.weight = embedding.weight

    def is_tied_to(self, embedding: nn.Embedding) -> bool:
        return self.proj.weight is embedding.weight

    def forward(self, hidden: Float[Tensor, "... dim"]) -> Float[Tensor, "... vocab"]:
        return self.proj(hidden)
