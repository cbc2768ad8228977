"""`xlm cards pin`: a copy of a card in the user's card dir that pins every file the card loads.

Each file's sha256 is measured on the copy already in the download cache (nothing is fetched, so what is pinned
is what was used), and a hub file named without a commit gets the commit its cached copy came from: a branch
moves, and a pinned hash on a moving branch would only fail later. The copy is self-contained (its base chain
merged, local paths made absolute) and, under the card's own name, replaces a shipped card of that name.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .card import AssetCard, CardError
from .card_files import CardFile, card_files, file_name
from .download import ChecksumError, cache_dir, cached_path, parse_hf_uri, sha256_of, sibling_uri
from .manifest import measure_manifest, verify_manifest
from .store import read_store, resolve_card, user_card_file, write_user_card

__all__ = ["pin_card", "pinned_card"]

_COMMIT = re.compile(r"[0-9a-f]{40}")


def _at_commit(uri: str, cached: Path) -> str:
    """An `hf://` URI at the commit of the snapshot its cached copy sits in (`.../snapshots/<commit>/<file>`)."""
    if not uri.startswith("hf://"):
        return uri
    location = parse_hf_uri(uri)
    if location.revision is not None and _COMMIT.fullmatch(location.revision):
        return uri
    commit = cached.parents[len(location.filename.split("/")) - 1].name
    return f"hf://{location.repo_id}@{commit}/{location.filename}"


def _absolute(uri: str, card: AssetCard) -> str:
    """A relative local path made absolute, so that it means the same file from the user's card dir."""
    if urllib.parse.urlparse(uri).scheme or Path(uri).expanduser().is_absolute() or card.base_dir is None:
        return uri
    return str((card.base_dir / uri).resolve())


def _measured(card: AssetCard, file: CardFile, force: bool) -> tuple[Path, str | None]:
    """The file's path and sha256; None for a directory checkpoint, which its manifest pins."""
    path = cached_path(file.uri, base_dir=card.base_dir, card=card.name)
    if path is None:
        raise CardError(f"card {card.name!r}: its {file.role} {file.uri} is not in the download cache {cache_dir()}; "
                        f"pin measures the files already fetched: run `xlm cards download {card.name}` (or load the "
                        f"card once) first")
    if path.is_dir():
        if file.role != "checkpoint":
            raise CardError(f"card {card.name!r}: its {file.role} {file.uri} is a directory ({path}); name the file "
                            f"inside it")
        return path, None
    actual = sha256_of(path)
    if file.sha256 is not None and file.sha256 != actual and not force:
        raise ChecksumError(f"card {card.name!r}: {file.uri} ({path}) has sha256 {actual}, but the card pins "
                            f"{file.sha256}; pass --force to pin the cached file instead")
    return path, actual


def _measured_manifest(card: AssetCard, directory: Path, force: bool) -> dict[str, str]:
    if card.manifest is not None and not force:
        try:
            verify_manifest(directory, card.manifest, card=card.name)
        except ChecksumError as err:
            raise ChecksumError(f"{err}; pass --force to pin the files as they are") from None
    return measure_manifest(directory)


def pinned_card(card: AssetCard, *, name: str | None = None, force: bool = False) -> dict[str, Any]:
    """The card's fields (base chain merged) with every file it loads pinned, as a YAML mapping named `name`."""
    files = card_files(card)
    if not files:
        raise CardError(f"card {card.name!r} ({card.source_file}) loads no files: nothing to pin")
    uris, hashes, manifest = {}, {}, None
    for role, file in files.items():
        path, sha = _measured(card, file, force)
        uris[role] = _absolute(_at_commit(file.uri, path), card)
        if sha is None:
            manifest = _measured_manifest(card, path, force)
        else:
            hashes[role] = sha
    if "config" in uris and uris["config"] != sibling_uri(uris["checkpoint"], "config.json"):
        raise CardError(f"card {card.name!r}: the cached {uris['checkpoint']} and {uris['config']} come from "
                        f"different commits; fetch both again (`xlm cards download {card.name}`), then pin")
    names = [file_name(uris[role]) for role in hashes]
    keyed_by_name = len(set(names)) == len(names)
    fields = {k: v for k, v in asdict(card).items()
              if v not in (None, {}) and k not in ("source_file", "base", "sha256", "manifest")}
    fields |= {"name": name or card.name, **{role: uris[role] for role in ("checkpoint", "tokenizer") if role in uris}}
    if hashes:
        fields["sha256"] = {file_name(uris[role]) if keyed_by_name else uris[role]: hashes[role] for role in hashes}
    if manifest is not None:
        fields["manifest"] = manifest
    return fields


def pin_card(name: str, *, as_name: str | None = None, force: bool = False) -> Path:
    """Writes the pinned copy of card `name` to the user's card dir, as `as_name` (default: `name`); returns its
    file. An existing file is replaced only with `force`, and only when it holds that one card."""
    new_name = name if as_name is None else as_name
    store = read_store()
    target = user_card_file(new_name, store, force=force, replaces_shipped=new_name == name)
    data = pinned_card(resolve_card(name, store), name=new_name, force=force)
    write_user_card(target, data)
    return target
