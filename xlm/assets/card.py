"""Asset cards: YAML documents that name a model and say where its weights are and how to read them.

    name: ilm_star_easy
    base: ilm_star            # inherit every field not set here
    model_family: ilm
    model_arch: ilm_star
    model_config: {vocab_size: 128}
    checkpoint: hf://org/repo@rev/model.safetensors   # or https://, file://, a path relative to this file
    checkpoint_format: xlm    # a run/export dir; or a converter of the family, e.g. hf_gpt2, xlm_core
    sha256: 3b1f...           # the checkpoint's; or one per file the card loads, by file name (or URI):
                              # {model.safetensors: 3b1f..., config.json: 9c2e..., tokenizer.json: 51aa...}
    tokenizer: ...            # a tokenizer file/URI, when the checkpoint does not carry one
    task: star_easy
    description: ...

A file may hold several cards separated by ``---``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from xlm.errors import XlmUserError


class CardError(XlmUserError, ValueError):
    """A malformed card, or a card that cannot be resolved."""


@dataclass(frozen=True, kw_only=True)
class AssetCard:
    name: str
    base: str | None = None
    model_family: str | None = None
    model_arch: str | None = None
    model_config: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    checkpoint_format: str | None = None
    sha256: str | dict[str, str] | None = None  # see `xlm.assets.card_files`
    tokenizer: str | None = None
    task: str | None = None
    description: str | None = None
    sampler: dict[str, Any] = field(default_factory=dict)  # sampler settings for load_generator
    metrics: dict[str, Any] = field(default_factory=dict)  # measured results, for the record
    train_command: str | None = None
    source_file: Path | None = None  # where the card was read from (not a YAML field)

    @property
    def base_dir(self) -> Path | None:
        return self.source_file.parent if self.source_file else None

    def merged_onto(self, base: AssetCard) -> AssetCard:
        """This card's fields over its base's; model_config and sampler merge key by key."""
        values = {f.name: getattr(base, f.name) for f in fields(self)}
        for f in fields(self):
            mine = getattr(self, f.name)
            if f.name in ("model_config", "sampler", "metrics"):
                values[f.name] = {**getattr(base, f.name), **mine}
            elif mine is not None and f.name != "base":
                values[f.name] = mine
        # a relative checkpoint stays relative to the card that named it
        if self.checkpoint is None:
            values["source_file"] = base.source_file
        values["base"] = base.base  # the chain goes on through the base's own base
        return replace(self, **values)


_FIELDS = {f.name for f in fields(AssetCard)} - {"source_file"}
_DICT_FIELDS = {"model_config", "sampler", "metrics"}


def card_from_mapping(data: Any, source: Path | str) -> AssetCard:
    where = str(source)
    if not isinstance(data, dict):
        raise CardError(f"{where}: a card is a YAML mapping of fields, got {type(data).__name__}")
    odd = [k for k in data if not isinstance(k, str)]
    if odd:
        raise CardError(f"{where}: card field names are strings, got {', '.join(map(repr, odd))} "
                        f"(a stray `?`, `:` or number at the start of a line?); "
                        f"known fields: {', '.join(sorted(_FIELDS))}")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, _FIELDS, n=1)) else repr(k)
                 for k in unknown]
        raise CardError(f"{where}: unknown card field(s) {', '.join(hints)}; "
                        f"known fields: {', '.join(sorted(_FIELDS))}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise CardError(f"{where}: every card needs a non-empty string `name`, got {name!r}")
    for key, value in data.items():
        if key in _DICT_FIELDS and not isinstance(value, dict):
            raise CardError(f"{where}: card {name!r} field {key!r} must be a mapping, got {type(value).__name__}")
        if key not in _DICT_FIELDS and key != "sha256" and value is not None and not isinstance(value, str):
            raise CardError(f"{where}: card {name!r} field {key!r} must be a string, got {value!r}")
    _check_sha256(data.get("sha256"), f"{where}: card {name!r}")
    return AssetCard(**data, source_file=Path(source) if not isinstance(source, Path) else source)


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value)


def _check_sha256(sha: Any, where: str) -> None:
    """`sha256` is the checkpoint's hash, or a mapping from the names (or URIs) of the files the card loads to
    theirs."""
    if sha is None or _is_sha256(sha):
        return
    if not isinstance(sha, dict):
        raise CardError(f"{where} sha256 must be 64 hex digits, or a mapping from file names to them, got {sha!r}")
    bad = {k: v for k, v in sha.items() if not (isinstance(k, str) and k and _is_sha256(v))}
    if bad or not sha:
        raise CardError(f"{where} sha256 maps the names (or URIs) of the files it loads to 64 hex digits each, "
                        f"e.g. {{model.safetensors: ..., config.json: ...}}; got {bad or sha!r}")


def read_card_file(path: Path) -> list[AssetCard]:
    """Every card in a YAML file (documents separated by ``---``; empty documents skipped)."""
    try:
        docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except yaml.YAMLError as err:
        raise CardError(f"{path}: not valid YAML: {err}") from None
    return [card_from_mapping(doc, path) for doc in docs if doc is not None]
