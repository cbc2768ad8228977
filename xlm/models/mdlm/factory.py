"""Builds an MdlmModel from its config (seeding is the caller's job)."""

from __future__ import annotations

import contextlib

import torch

from .config import MdlmConfig
from .model import MdlmModel


def create_mdlm_model(config: MdlmConfig, *, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = None) -> MdlmModel:
    """Allocates directly on `device` ("meta" builds without memory, e.g. to count parameters)."""
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = MdlmModel(config)
    return model if dtype is None else model.to(dtype)
