"""Builds an ArlmModel from its config (seeding is the caller's job)."""

from __future__ import annotations

import contextlib

import torch

from .config import ArlmConfig
from .model import ArlmModel


def create_arlm_model(config: ArlmConfig, *, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None) -> ArlmModel:
    """Allocates directly on `device` ("meta" builds without memory, e.g. to count parameters)."""
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = ArlmModel(config)
    return model if dtype is None else model.to(dtype)
