"""Builds an MlmModel from its config (seeding is the caller's job)."""

from __future__ import annotations

import contextlib

import torch

from .config import MlmConfig
from .model import MlmModel


def create_mlm_model(config: MlmConfig, *, device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> MlmModel:
    """Allocates directly on `device` ("meta" builds without memory, e.g. to count parameters)."""
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = MlmModel(config)
    return model if dtype is None else model.to(dtype)
