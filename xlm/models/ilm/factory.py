"""Builds an IlmModel from its config (seeding is the caller's job)."""

from __future__ import annotations

import contextlib

import torch

from .config import IlmConfig
from .model import IlmModel


def create_ilm_model(config: IlmConfig, *, device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> IlmModel:
    """Allocates directly on `device` ("meta" builds without memory, e.g. to count parameters)."""
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = IlmModel(config)
    return model if dtype is None else model.to(dtype)
