"""A checkpoint in a foreign layout read into a model of its family.

    model, converted = convert_checkpoint(get_family("arlm"), "hf_gpt2", Path("gpt2/"))
    print(converted.summary())     # what was mapped, dropped and noted

The converter gives the family's config and a state dict in its layout; the family's factory builds the
model, and the state loads strictly (missing, unexpected and wrong-shape keys reported together).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from xlm.errors import user_values
from xlm.registry import Family
from xlm.run_dir import load_state_strict

from .detect import converter_for

__all__ = ["convert_checkpoint"]


def convert_checkpoint(family: Family, fmt: str, path: Path, config_overrides: Mapping[str, Any] | None = None,
                       device: torch.device | str | None = None,
                       dtype: torch.dtype | None = None) -> tuple[torch.nn.Module, Any]:
    """The model (eval mode) read from `path` in the family's layout `fmt`, and the converter's record of
    the conversion (`.summary()`)."""
    converted = converter_for(family, fmt)(path)
    config, state = converted
    if config_overrides:
        with user_values():  # a card's or caller's model_config the family's config refuses
            config = replace(config, **config_overrides)
    model = family.factory(config, device=device, dtype=dtype)
    load_state_strict(model, state, where=str(path))
    return model.eval(), converted
