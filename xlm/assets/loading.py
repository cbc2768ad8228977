"""load_model / load_tokenizer / load_generator: one call from a card name or a path to a model.

Accepted: a card name (`xlm cards list`), a run or export dir (config.json with
`format_version`), an HF transformers model dir (family read from its config.json's
`model_type`), or a checkpoint file with `family=` given. Loading is strict everywhere:
missing, unexpected and wrong-shape keys are reported together.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from xlm.data.tokenizers import Tokenizer
from xlm.errors import PathNotFoundError, UnknownFormatError, user_values
from xlm.registry import Family, get_family
from xlm.run_dir import RunDirError, load_run_model, load_run_sampler_config, load_run_tokenizer, load_state_strict

from .card import AssetCard, CardError
from .download import fetch, sibling_uri
from .store import resolve_card

if TYPE_CHECKING:
    from .generator import Generator

#: HF transformers `model_type` -> (family, converter name in Family.converters).
HF_MODEL_TYPES: dict[str, tuple[str, str]] = {"gpt2": ("arlm", "hf_gpt2"), "llama": ("arlm", "hf_llama"),
                                              "bert": ("mlm", "hf_bert")}


#: Formats whose weights file comes with a config.json beside it (fetched along with it).
FORMATS_WITH_CONFIG = ("xlm", "hf_gpt2", "hf_llama", "hf_bert", "mdlm_reference", "xlm_core")


def _is_run_dir(path: Path) -> bool:
    config = path / "config.json"
    return config.is_file() and "format_version" in json.loads(config.read_text())


def _card_or_path(name_or_path: str | Path) -> tuple[AssetCard | None, Path | None]:
    path = Path(name_or_path).expanduser()
    if path.exists():
        return None, path
    if isinstance(name_or_path, Path) or "/" in str(name_or_path):
        raise PathNotFoundError(f"{str(name_or_path)!r} does not exist (nor is it a card name)")
    return resolve_card(str(name_or_path)), None


def _checkpoint_path(card: AssetCard) -> Path:
    """The checkpoint on local disk. An xlm-format checkpoint named by its model.safetensors
    brings its config.json along (fetched from beside it), and the path returned is their dir."""
    if not card.checkpoint:
        raise CardError(f"card {card.name!r} ({card.source_file}) has no checkpoint to load")
    path = fetch(card.checkpoint, sha256=card.sha256, base_dir=card.base_dir, card=card.name)
    if (card.checkpoint_format or "xlm") in FORMATS_WITH_CONFIG and path.is_file() and path.suffix == ".safetensors":
        config = fetch(sibling_uri(card.checkpoint, "config.json"), base_dir=card.base_dir, card=card.name)
        if config.parent != path.parent:
            raise CardError(f"card {card.name!r}: {card.checkpoint} and its config.json landed in different "
                            f"directories ({path.parent}, {config.parent})")
        path = path.parent
    return path


def convert_checkpoint(family: Family, fmt: str, path: Path, config_overrides: Mapping[str, Any] | None = None,
                       device: torch.device | str | None = None,
                       dtype: torch.dtype | None = None) -> tuple[torch.nn.Module, Any]:
    """The model read from a foreign layout, and the converter's record of it (`.summary()`)."""
    converter = family.converters.get(fmt)
    if converter is None:
        raise UnknownFormatError(f"family {family.name!r} cannot read checkpoint format {fmt!r}; it reads "
                                 f"{sorted(['xlm', *family.converters])}")
    converted = converter(path)
    config, state = converted
    if config_overrides:
        with user_values():
            config = replace(config, **config_overrides)
    model = family.factory(config, device=device, dtype=dtype)
    load_state_strict(model, state, where=str(path))
    return model.eval(), converted


def detect_format(path: Path, family: str | None, fmt: str | None) -> tuple[str, str]:
    """(family, checkpoint format) of an HF model dir, or as given for a checkpoint file."""
    if fmt is None and path.is_dir() and (path / "config.json").is_file():
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        if model_type not in HF_MODEL_TYPES:
            raise UnknownFormatError(f"{path}/config.json has model_type {model_type!r}; xlm converts HF "
                                     f"{sorted(HF_MODEL_TYPES)} models (or give family= and a checkpoint format)")
        family, fmt = HF_MODEL_TYPES[model_type]
    if fmt is None and family is not None and not path.is_dir():
        formats = list(get_family(family).converters)
        fmt = formats[0] if len(formats) == 1 else None
    if family is None or fmt is None:
        raise UnknownFormatError(f"cannot tell what {path} holds: pass family= (one of the registered families) "
                                 f"and, when the family reads several layouts, checkpoint_format=; or give a run dir "
                                 f"/ HF model dir")
    return family, fmt


def _load_path(path: Path, *, family: str | None, fmt: str | None, config_overrides: Mapping[str, Any] | None,
               device: torch.device | str | None, dtype: torch.dtype | None) -> torch.nn.Module:
    if path.is_dir() and _is_run_dir(path):
        return load_run_model(path, device=device, dtype=dtype, config_overrides=config_overrides)
    family, fmt = detect_format(path, family, fmt)
    return convert_checkpoint(get_family(family), fmt, path, config_overrides, device, dtype)[0]


def load_model(name_or_path: str | Path, *, family: str | None = None, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None, config_overrides: Mapping[str, Any] | None = None,
               checkpoint_format: str | None = None) -> torch.nn.Module:
    """The model in eval mode."""
    from xlm.plugins import load_external_models

    load_external_models()  # a run of an external family needs that family registered
    card, path = _card_or_path(name_or_path)
    if card is None:
        assert path is not None
        return _load_path(path, family=family, fmt=checkpoint_format, config_overrides=config_overrides, device=device,
                          dtype=dtype)
    overrides = {**card.model_config, **(config_overrides or {})}
    path = _checkpoint_path(card)
    fmt = card.checkpoint_format or "xlm"
    if fmt == "xlm":
        return load_run_model(path, device=device, dtype=dtype, config_overrides=overrides or None)
    return _load_path(path, family=family or card.model_family, fmt=fmt, config_overrides=overrides or None,
                      device=device, dtype=dtype)


def load_tokenizer(name_or_path: str | Path) -> Tokenizer:
    card, path = _card_or_path(name_or_path)
    if card is not None:
        if card.tokenizer:
            from xlm.data.tasks.text import load_tokenizer_file

            return load_tokenizer_file(str(fetch(card.tokenizer, base_dir=card.base_dir, card=card.name)))
        path = _checkpoint_path(card)
    assert path is not None
    if path.is_dir() and _is_run_dir(path):
        return load_run_tokenizer(path)
    if path.is_dir() and (path / "tokenizer.json").is_file():
        from xlm.data.hf_tokenizer import HFTokenizer

        return HFTokenizer.from_file(path)
    raise RunDirError(f"{path} carries no tokenizer (a run dir's config.json or an HF tokenizer.json)")


def _sampler_config(name_or_path: str | Path, family: Family, sampling: Mapping[str, Any]) -> Any:
    card, path = _card_or_path(name_or_path)
    if card is not None:
        path = _checkpoint_path(card)
        sampling = {**card.sampler, **sampling}
    assert path is not None
    if path.is_dir() and _is_run_dir(path):
        return load_run_sampler_config(path, **sampling)
    with user_values():
        return family.sampler_config_class(**sampling)


def family_of(model: torch.nn.Module) -> Family:
    from xlm.registry import families

    for name in families.names():
        family = families.get(name)
        if isinstance(model.config, family.config_class):  # type: ignore[union-attr]
            return family
    raise ValueError(f"{type(model).__name__} belongs to no registered family")


def load_generator(name_or_path: str | Path, *, family: str | None = None, device: torch.device | str | None = None,
                   **sampling: Any) -> Generator:
    """A ready sampler: the model, its tokenizer and its family's predictor with the card's, the run's,
    or the given sampling settings."""
    from .generator import Generator

    model = load_model(name_or_path, family=family, device=device)
    fam = family_of(model)
    return Generator(model, load_tokenizer(name_or_path), fam, _sampler_config(name_or_path, fam, sampling))
