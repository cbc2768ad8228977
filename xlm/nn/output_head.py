"""Language-model output projection, optionally tied to the token embedding.

Tying is plain parameter sharing (`proj.weight is embedding.weight`), so `state_dict` lists
both keys over one storage. `safetensors.torch.save_file` refuses shared tensors: save with
`safetensors.torch.save_model`/`load_model`, or drop the tied key before `save_file`.
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor, nn


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
