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
    manifest: {config.json: 9c2e..., model.safetensors: 3b1f...}   # a directory checkpoint's files, by their
                              # paths inside it (`xlm.assets.manifest`); one sha256 cannot pin a directory
    tokenizer: ...            # a tokenizer file/URI, when the checkpoint does not carry one
    task: star_easy
    description: ...

A file may hold several cards separated by ``---``. Card files are small and plain: at most MAX_FILE_BYTES,
UTF-8, without YAML anchors, aliases or tags, nested at most MAX_DEPTH deep (`xlm.assets.card_yaml`). A card's
name is also its file's name in the user's card dir, so it is a plain file name (CARD_NAME).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from xlm.errors import XlmUserError

from .card_yaml import RefusedYaml, load_documents

MAX_FILE_BYTES = 64 * 1024  # a card is a few hundred bytes; PyYAML reads this much in about a second at worst
CARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class CardError(XlmUserError, ValueError):
    """A malformed card, or a card that cannot be resolved."""


class UnknownCardError(CardError):
    """A name that no card on the search path has (nor an arch: that is a CardError of its own)."""


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
    manifest: dict[str, str] | None = None  # a directory checkpoint's files: see `xlm.assets.manifest`
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
_PIN_FIELDS = {"sha256", "manifest"}


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
    check_card_name(name, where)
    for key, value in data.items():
        if key in _DICT_FIELDS and not isinstance(value, dict):
            raise CardError(f"{where}: card {name!r} field {key!r} must be a mapping, got {type(value).__name__}")
        if key not in _DICT_FIELDS and key not in _PIN_FIELDS and value is not None and not isinstance(value, str):
            raise CardError(f"{where}: card {name!r} field {key!r} must be a string, got {value!r}")
    _check_sha256(data.get("sha256"), f"{where}: card {name!r}")
    _check_manifest(data.get("manifest"), f"{where}: card {name!r}")
    return AssetCard(**data, source_file=Path(source) if not isinstance(source, Path) else source)


def check_card_name(name: str, where: str) -> None:
    """A card's name names its file in the user's card dir (`xlm cards add`, `xlm cards pin`): a path in it would
    write elsewhere."""
    if not CARD_NAME.fullmatch(name) or ".." in name:
        raise CardError(f"{where}: {name!r} is not a card name: a card name is 1 to 100 letters, digits, '.', '_' "
                        f"and '-', starting with a letter or digit, without '..' (no path: it names a file in "
                        f"the card dir)")


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


def _check_manifest(manifest: Any, where: str) -> None:
    """`manifest` maps paths inside a directory checkpoint (relative, '/'-separated, never leaving it) to hashes."""
    if manifest is None:
        return
    if not isinstance(manifest, dict) or not manifest:
        raise CardError(f"{where} manifest maps the paths of a directory checkpoint's files to their sha256, "
                        f"e.g. {{config.json: ..., model.safetensors: ...}}; got {manifest!r}")
    bad = {k: v for k, v in manifest.items() if not (_is_inside_path(k) and _is_sha256(v))}
    if bad:
        raise CardError(f"{where} manifest maps paths inside the checkpoint dir ('/'-separated, without '..') to 64 "
                        f"hex digits each; got {bad!r}")


def _is_inside_path(key: Any) -> bool:
    return (isinstance(key, str) and "\\" not in key and not key.startswith("/")
            and all(part not in ("", ".", "..") for part in key.split("/")))


def card_documents(path: Path) -> list[Any]:
    """The YAML documents of a card file, read within bounds (size, UTF-8, no aliases, nesting): anything else is
    one CardError naming the file (and the line, where there is one)."""
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise CardError(f"{path}: over {MAX_FILE_BYTES} bytes, more than any card file needs; it was not read")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise CardError(f"{path}, line {line}: not UTF-8 text (byte {data[err.start]:#04x}); save the file as "
                        f"UTF-8") from None
    try:
        return load_documents(text)
    except RefusedYaml as err:
        raise CardError(f"{path}, line {err.line}, column {err.column}: {err}") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        what = _one_line(" ".join(p for p in (err.context, err.problem) if p))
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise CardError(f"{path}{at}: not valid YAML: {what}") from None
    except yaml.YAMLError as err:
        raise CardError(f"{path}: not valid YAML: {_one_line(str(err))}") from None
    except (ValueError, OverflowError) as err:  # YAML that Python cannot build: a 5000-digit integer, a 13th month
        raise CardError(f"{path}: a value in it cannot be read ({_one_line(str(err))})") from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def read_card_file(path: Path) -> list[AssetCard]:
    """Every card in a YAML file (documents separated by ``---``; empty documents skipped)."""
    return [card_from_mapping(doc, path) for doc in card_documents(path) if doc is not None]
