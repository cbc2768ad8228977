"""An exponential moving average of a model's weights, which evaluation and the exported model
use when `trainer.ema_decay` is set."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class ModelEma:
    """Exponential moving average of the parameters (buffers are copied)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].lerp_(v.float(), 1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)

    @contextlib.contextmanager
    def swapped_into(self, model: torch.nn.Module) -> Iterator[None]:
        """The model holds the averaged weights inside the block and its own ones again after it."""
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict({k: v.to(backup[k].dtype) for k, v in self.shadow.items()})
        try:
            yield
        finally:
            model.load_state_dict(backup)
