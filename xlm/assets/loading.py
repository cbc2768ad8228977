"""load_model / load_tokenizer / load_generator: one call from a card name or a path to a model.

Accepted: a card name (`xlm cards list`), a run or export dir (config.json with
`format_version`), a model dir or checkpoint file in a layout some family's converter
recognises (an HF transformers dir by its config.json's `model_type`, ...; see
`xlm.interop.detect`), or any checkpoint with `family=` (and `checkpoint_format=`) given.
`resolve_source` says where a name or path leads and what layout it is in. Loading is strict
everywhere: missing, unexpected and wrong-shape keys are reported together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from xlm.data.tokenizers import Tokenizer
from xlm.errors import InvalidValueError, PathNotFoundError
from xlm.interop.convert import convert_checkpoint
from xlm.interop.detect import XLM_FORMAT, detect_format
from xlm.placement import as_device, as_dtype
from xlm.registry import Family, get_family
from xlm.run_dir import (RunDirError, build_dataclass, is_run_dir, load_run_model, load_run_sampler_config,
                         load_run_tokenizer)

from .card import AssetCard, CardError, UnknownCardError
from .card_files import card_files, fetch_card_file
from .store import resolve_card

if TYPE_CHECKING:
    from .generator import Generator

__all__ = ["ResolvedSource", "card_or_path", "checkpoint_path", "load_generator", "load_model", "load_tokenizer",
           "resolve_source", "sampler_config_for", "source_model", "source_tokenizer"]


@dataclass(frozen=True, kw_only=True)
class ResolvedSource:
    """Where a card name or path leads: the checkpoint on local disk, its family, and its layout (`fmt`:
    "xlm" for a run or export dir, else the name of the family's converter); `card` when it came from one."""

    path: Path
    family: str
    fmt: str
    card: AssetCard | None = None

    @property
    def is_run_dir(self) -> bool:
        return self.fmt == XLM_FORMAT


def card_or_path(name_or_path: str | Path) -> tuple[AssetCard | None, Path | None]:
    """(None, the path) for an existing path, else (the card of that name, None)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return None, path
    if isinstance(name_or_path, Path) or "/" in str(name_or_path):
        raise PathNotFoundError(f"{str(name_or_path)!r} does not exist (nor is it a card name)")
    try:
        return resolve_card(str(name_or_path)), None
    except UnknownCardError as err:  # a run dir named without a slash, mistyped, is as likely a mistake
        raise CardError(f"{err}; nor is there a file or directory {str(name_or_path)!r} in {Path.cwd()}") from None


def checkpoint_path(card: AssetCard) -> Path:
    """The card's checkpoint on local disk. A weights file whose layout comes with a config.json
    (`Converter.needs_config`, and xlm's own) brings it along, fetched from beside it, and the path
    returned is their dir. Each file is checked against the card's pins (`card_files`)."""
    files = card_files(card)
    if "checkpoint" not in files:
        raise CardError(f"card {card.name!r} ({card.source_file}) has no checkpoint to load")
    path = fetch_card_file(card, files["checkpoint"])
    if path.is_file() and "config" in files:
        config = fetch_card_file(card, files["config"])
        if config.parent != path.parent:
            raise CardError(f"card {card.name!r}: {card.checkpoint} and its config.json landed in different "
                            f"directories ({path.parent}, {config.parent})")
        path = path.parent
    return path


def resolve_source(name_or_path: str | Path, *, family: str | None = None,
                   checkpoint_format: str | None = None) -> ResolvedSource:
    """The checkpoint a card name or path leads to (downloaded, for a card), with its family and layout:
    the arguments first, then the card's fields, then what `xlm.interop.detect` recognises."""
    card, path = card_or_path(name_or_path)
    if card is not None:
        path = checkpoint_path(card)
        family = family or card.model_family
        checkpoint_format = checkpoint_format or card.checkpoint_format or XLM_FORMAT
    assert path is not None
    if path.is_dir() and (path / "checkpoints").is_dir() and not is_run_dir(path):
        raise RunDirError(f"{path} is a run that has not finished: rerun its train command to resume it, or load "
                          f"one of its checkpoints with `xlm eval` or `xlm generate --model {path} --checkpoint "
                          f"step_N` (or `last`)")
    family, fmt = detect_format(path, family, checkpoint_format)
    return ResolvedSource(path=path, family=family, fmt=fmt, card=card)


def source_model(source: ResolvedSource, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 config_overrides: Mapping[str, Any] | None = None) -> torch.nn.Module:
    """The model `source` holds, in eval mode (the card's model settings under `config_overrides`)."""
    device = None if device is None else as_device(device)
    dtype = None if dtype is None else as_dtype(dtype)
    overrides = {**(source.card.model_config if source.card else {}), **(config_overrides or {})} or None
    if source.is_run_dir:
        return load_run_model(source.path, device=device, dtype=dtype, config_overrides=overrides)
    return convert_checkpoint(get_family(source.family), source.fmt, source.path, overrides, device, dtype)[0]


def load_model(name_or_path: str | Path, *, family: str | None = None, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None, config_overrides: Mapping[str, Any] | None = None,
               checkpoint_format: str | None = None) -> torch.nn.Module:
    """The model in eval mode."""
    source = resolve_source(name_or_path, family=family, checkpoint_format=checkpoint_format)
    return source_model(source, device=device, dtype=dtype, config_overrides=config_overrides)


def _tokenizer(card: AssetCard | None, path: Path | None) -> Tokenizer:
    """A checkpoint from another layout brings its own tokenizer, used as it is (`HFTokenizer.of_model`);
    a card's tokenizer file for an xlm checkpoint is read as xlm's text task read it for training."""
    from xlm.data.hf_tokenizer import HFTokenizer

    if card is not None and card.tokenizer:
        from xlm.data.tasks.text import load_tokenizer_file

        file = fetch_card_file(card, card_files(card)["tokenizer"])
        if (card.checkpoint_format or XLM_FORMAT) != XLM_FORMAT and file.suffix == ".json":
            return HFTokenizer.of_model(file)
        return load_tokenizer_file(str(file))
    if card is not None and path is None:
        path = checkpoint_path(card)
    assert path is not None
    if is_run_dir(path):
        return load_run_tokenizer(path)
    if path.is_dir() and (path / "tokenizer.json").is_file():
        return HFTokenizer.of_model(path)
    raise RunDirError(f"{path} carries no tokenizer (a run dir's config.json or an HF tokenizer.json)")


def source_tokenizer(source: ResolvedSource) -> Tokenizer:
    """The tokenizer that comes with `source` (as `load_tokenizer` finds it)."""
    return _tokenizer(source.card, source.path)


def load_tokenizer(name_or_path: str | Path) -> Tokenizer:
    """The tokenizer a card names, or the one a run dir or an HF model dir carries."""
    return _tokenizer(*card_or_path(name_or_path))


#: Sampler settings of a checkpoint from another layout, where its family's sampler has them, unless the card or
#: the call gives others: it was not trained on xlm's seq2seq rows, so a prompt is continued as it is.
FOREIGN_SAMPLING: dict[str, Any] = {"prompt_format": "continuation"}


def sampler_config_for(source: ResolvedSource, family: Family, sampling: Mapping[str, Any]) -> Any:
    """The sampler settings a checkpoint generates with: the run's, or FOREIGN_SAMPLING's; the card's and then
    `sampling` over them."""
    if source.card is not None:
        sampling = {**source.card.sampler, **sampling}
    if source.is_run_dir:
        return load_run_sampler_config(source.path, **sampling)
    known = {f.name for f in fields(family.sampler_config_class)}
    sampling = {**{k: v for k, v in FOREIGN_SAMPLING.items() if k in known}, **sampling}
    return build_dataclass(family.sampler_config_class, sampling, f"{family.name} sampler settings",
                           kind="sampler key")


def load_generator(name_or_path: str | Path, *, family: str | None = None, device: torch.device | str | None = None,
                   **sampling: Any) -> Generator:
    """A ready sampler: the model, its tokenizer and its family's predictor with the card's, the run's,
    or the given sampling settings."""
    from .generator import Generator

    if isinstance(sampling.get("sampler"), Mapping):
        raise InvalidValueError("load_generator takes sampler settings as keywords, e.g. load_generator(name, "
                                "top_p=0.9), or as load_generator(name, **settings); not sampler={...}")
    source = resolve_source(name_or_path, family=family)
    fam = get_family(source.family)
    return Generator(source_model(source, device=device), source_tokenizer(source), fam,
                     sampler_config_for(source, fam, sampling))
