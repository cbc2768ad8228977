"""xlm: language models of different generative families, side by side.

    import xlm
    model = xlm.load_model("runs/arlm_star_easy")       # a run dir, a card name, an HF model dir
    xlm.load_generator("runs/arlm_star_easy").generate(["..."])
    xlm.list_archs()  # {"arlm_star": "arlm", ...}

Importing xlm reads no file and imports neither torch nor any plugin: each public name is
imported on first use (module `__getattr__`), the core families and tasks register on the first
registry lookup, and external families are discovered when a lookup needs them (`xlm.plugins`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> (the module defining it, its name there). A new public name is one entry here, and
#: its import below for type checkers (tests/test_imports.py checks that the two agree).
_PUBLIC: dict[str, tuple[str, str]] = {
    "AssetCard": ("xlm.assets", "AssetCard"),
    "Family": ("xlm.registry", "Family"),
    "Generator": ("xlm.assets", "Generator"),
    "create_model": ("xlm.registry", "create_model"),
    "export": ("xlm.interop.export", "export"),
    "get_family": ("xlm.registry", "get_family"),
    "list_archs": ("xlm.registry", "list_archs"),
    "list_cards": ("xlm.assets.store", "all_cards"),
    "list_families": ("xlm.registry", "list_families"),
    "list_tasks": ("xlm.registry", "list_tasks"),
    "load_external_models": ("xlm.plugins", "load_external_models"),
    "load_generator": ("xlm.assets", "load_generator"),
    "load_model": ("xlm.assets", "load_model"),
    "load_tokenizer": ("xlm.assets", "load_tokenizer"),
    "register_family": ("xlm.registry", "register_family"),
    "register_task": ("xlm.registry", "register_task"),
}

if TYPE_CHECKING:  # `import X as X` marks a re-export
    from xlm.assets import AssetCard as AssetCard
    from xlm.registry import Family as Family
    from xlm.assets import Generator as Generator
    from xlm.registry import create_model as create_model
    from xlm.interop.export import export as export
    from xlm.registry import get_family as get_family
    from xlm.registry import list_archs as list_archs
    from xlm.assets.store import all_cards as list_cards  # noqa: F401  (listed in __all__ through _PUBLIC)
    from xlm.registry import list_families as list_families
    from xlm.registry import list_tasks as list_tasks
    from xlm.plugins import load_external_models as load_external_models
    from xlm.assets import load_generator as load_generator
    from xlm.assets import load_model as load_model
    from xlm.assets import load_tokenizer as load_tokenizer
    from xlm.registry import register_family as register_family
    from xlm.registry import register_task as register_task

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        module, attribute = _PUBLIC[name]
        value = getattr(importlib.import_module(module), attribute)
    elif not name.startswith("_") and _is_submodule(name):
        value = importlib.import_module(f"{__name__}.{name}")  # e.g. xlm.models
    else:
        import difflib

        close = difflib.get_close_matches(name, __all__, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}{hint} Public names: "
                             f"{', '.join(sorted(__all__))}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def _is_submodule(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(f"{__name__}.{name}") is not None


def __dir__() -> list[str]:
    """The public names and the submodules imported so far; not this file's own imports (Any, importlib)."""
    import types

    loaded = {name for name, value in globals().items()
              if isinstance(value, types.ModuleType) and value.__name__.startswith(f"{__name__}.")}
    return sorted({*__all__, *loaded})
