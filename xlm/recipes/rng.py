"""Every random number generator training draws from (torch, CUDA, NumPy, Python), captured into a
checkpoint and restored on resume so that the resumed run draws the same numbers."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """Plain Python values only: gatherable across ranks and loadable with weights_only=True."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state().numpy().tobytes(),
        "cuda": [s.numpy().tobytes() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what `rng_state` captured (the CUDA states only where CUDA is available)."""
    torch.set_rng_state(bytes_tensor(state["torch"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([bytes_tensor(s) for s in state["cuda"]])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])


def bytes_tensor(data: bytes) -> torch.Tensor:
    """A uint8 tensor over a copy of `data` (torch's RNG setters take their state as one)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)
