"""xlm: language models of different generative families, side by side.

    import xlm
    model = xlm.load_model("runs/arlm_star_easy")       # a run dir, a card name, an HF model dir
    xlm.load_generator("runs/arlm_star_easy").generate(["..."])
    xlm.list_archs()  # {"arlm_star": "arlm", ...}
"""

from __future__ import annotations

from typing import Any

import torch

from xlm import models as _models  # noqa: F401  (registers the core families)
from xlm.registry import Family, get_family, list_families, register_family, families
from xlm.assets import AssetCard, Generator, all_cards, load_generator, load_model, load_tokenizer
from xlm.interop.export import export
from xlm.plugins import load_external_models

__version__ = "0.1.0"
load_external_models()  # families declared by xlm_models.json, $XLM_MODELS_PATH/_PACKAGES, entry points


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


def list_cards() -> dict[str, AssetCard]:
    """Every card on the search path, by name (`xlm cards list`)."""
    return all_cards()


__all__ = ["AssetCard", "Family", "Generator", "create_model", "export", "get_family", "list_archs", "list_cards",
           "list_families", "load_external_models", "load_generator", "load_model", "load_tokenizer", "register_family"]
