"""The files a card loads, each with the sha256 the card pins it to.

A card loads its checkpoint, the config.json beside a weights file whose layout comes with one, and its
tokenizer file. `sha256:` as a string pins the checkpoint alone; as a mapping it pins any of them, keyed by the
file's name (or its whole URI, where two of them share a name): a config.json decides as much of what a model
computes as its weights do, so a card can pin everything it loads. A checkpoint that is a directory is pinned file
by file under `manifest:` (`xlm.assets.manifest`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from xlm.interop.detect import XLM_FORMAT, needs_config

from .card import AssetCard, CardError
from .download import cached_path, fetch, sibling_uri
from .manifest import verify_manifest

__all__ = ["CardFile", "Role", "card_files", "fetch_card_file", "file_name"]

Role = Literal["checkpoint", "config", "tokenizer"]


@dataclass(frozen=True, kw_only=True)
class CardFile:
    role: Role
    uri: str
    sha256: str | None  # lower-case hex; None where the card pins none


def file_name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def card_files(card: AssetCard) -> dict[Role, CardFile]:
    """Every file the card loads, by role, with the hash the card pins it to."""
    uris: dict[Role, str] = {}
    if card.checkpoint:
        uris["checkpoint"] = card.checkpoint
        fmt = card.checkpoint_format or XLM_FORMAT
        if card.checkpoint.endswith(".safetensors") and needs_config(fmt, card.model_family):
            uris["config"] = sibling_uri(card.checkpoint, "config.json")
    if card.tokenizer:
        uris["tokenizer"] = card.tokenizer
    pins = _pins(card, list(dict.fromkeys(uris.values())))
    return {role: CardFile(role=role, uri=uri, sha256=pins.get(uri)) for role, uri in uris.items()}


def _pins(card: AssetCard, loaded: list[str]) -> dict[str, str]:
    """URI -> pinned hash; a key that names no file the card loads, or several, is an error (it would pin nothing)."""
    if card.sha256 is None:
        return {}
    if isinstance(card.sha256, str):
        return {card.checkpoint: card.sha256.lower()} if card.checkpoint else {}
    by_name: dict[str, list[str]] = {}
    for uri in loaded:
        by_name.setdefault(file_name(uri), []).append(uri)
    where = f"card {card.name!r} ({card.source_file})"
    unknown = [k for k in card.sha256 if k not in loaded and k not in by_name]
    if unknown:
        files = ", ".join(f"{file_name(u)} ({u})" for u in loaded) or "nothing"
        raise CardError(f"{where}: sha256 pins {', '.join(map(repr, unknown))}, which the card does not load; it "
                        f"loads {files}: key each hash by one of these names, or by its URI{_dir_hint(card)}")
    shared = {k: by_name[k] for k in card.sha256 if k not in loaded and len(by_name[k]) > 1}
    if shared:
        k, uris = next(iter(shared.items()))
        raise CardError(f"{where}: sha256 key {k!r} names {len(uris)} files the card loads ({', '.join(uris)}); "
                        f"key their hashes by URI")
    pins = {uri: card.sha256.get(uri) or card.sha256.get(file_name(uri)) for uri in loaded}
    return {uri: sha.lower() for uri, sha in pins.items() if sha}


def _dir_hint(card: AssetCard) -> str:
    local = cached_path(card.checkpoint, base_dir=card.base_dir, card=card.name) if card.checkpoint else None
    return "; the files inside a directory checkpoint are pinned under `manifest:`" if local and local.is_dir() else ""


def fetch_card_file(card: AssetCard, file: CardFile) -> Path:
    """The file on local disk, fetched into the cache when remote, and checked against its pin (a directory
    checkpoint against the card's manifest)."""
    path = fetch(file.uri, sha256=file.sha256, base_dir=card.base_dir, card=card.name,
                 unpinned_note=_unpinned_note(card, file))
    if file.role == "checkpoint" and card.manifest is not None:
        if not path.is_dir():
            raise CardError(f"card {card.name!r} ({card.source_file}): `manifest:` pins the files of a directory "
                            f"checkpoint, but {file.uri} is a file ({path}); pin a file with `sha256:`")
        verify_manifest(path, card.manifest, card=card.name)
    return path


def _unpinned_note(card: AssetCard, file: CardFile) -> str:
    """Pinned weights with an unpinned config.json beside them look pinned, and are not."""
    if file.role != "config" or file.sha256 is not None or card_files(card)["checkpoint"].sha256 is None:
        return ""
    return (": the card pins its weights but not this config.json, which decides as much of what the model computes "
            "as they do (and, for an xlm checkpoint, how it samples)")
