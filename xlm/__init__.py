"""xlm: language models of different generative families, side by side.

    import xlm
    model = xlm.load_model("runs/arlm_star_star_easy")
    xlm.list_archs()  # {"arlm_star": "arlm", ...}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from xlm import models as _models  # noqa: F401  (registers the core families)
from xlm.data.tokenizers import Tokenizer
from xlm.registry import Family, get_family, list_families, register_family, families
from xlm.run_dir import load_run_model, load_run_tokenizer

__version__ = "0.1.0"


def list_archs() -> dict[str, str]:
    """Every registered arch name -> its family."""
    return families.list_archs()


def create_model(arch: str, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 **config_overrides: Any) -> torch.nn.Module:
    """A freshly initialised model of a registered arch, e.g. create_model("arlm_tiny", vocab_size=100)."""
    family = families.get_by_arch(arch)
    config = family.archs.get(arch)
    for key, value in config_overrides.items():
        if not hasattr(config, key):
            raise TypeError(f"{type(config).__name__} has no field {key!r}")
        setattr(config, key, value)
    if hasattr(config, "__post_init__"):
        config.__post_init__()
    return family.factory(config, device=device, dtype=dtype)


def load_model(name_or_path: str | Path, *, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None, config_overrides: Mapping[str, Any] | None = None) -> torch.nn.Module:
    """A model from a run or export dir, in eval mode (asset cards and converters come later)."""
    path = Path(name_or_path)
    if not path.is_dir():
        raise FileNotFoundError(f"{name_or_path!r} is not a run or export dir (a directory holding "
                                f"config.json and model.safetensors)")
    return load_run_model(path, device=device, dtype=dtype, config_overrides=config_overrides)


def load_tokenizer(name_or_path: str | Path) -> Tokenizer:
    return load_run_tokenizer(name_or_path)


__all__ = ["Family", "create_model", "get_family", "list_archs", "list_families", "load_model",
           "load_tokenizer", "register_family"]
