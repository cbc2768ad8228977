"""The card store: every card on the search path, by name.

Search path, in order: the shipped cards (``assets/cards/``, `xlm.shipped.cards_dir`), the user's directory
(`user_card_dir`), each directory of ``$XLM_ASSET_PATH`` (colon-separated), and directories contributed
by external families. A card in the user's directory replaces a shipped card of its name (`xlm cards
pin` writes such copies). Read fresh on every lookup, so a card added a moment ago is seen. Card names
and arch names are separate: a card is a trained model, an arch an untrained architecture that
`xlm.create_model` and `xlm train --arch` take.

A card file that cannot be read, or a name defined twice, is reported (one BrokenCardWarning) and
left out, and every other card keeps working: looking up a name it would define says why it cannot be
used. A user card file is written whole or not at all, and never over another without `--force`.
"""

from __future__ import annotations

import difflib
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xlm.errors import PathExistsError, XlmWarning
from xlm.registry import families
from xlm.shipped import cards_dir

from .card import AssetCard, CardError, UnknownCardError, card_documents, check_card_name, read_card_file

_extra_dirs: list[Path] = []


class BrokenCardWarning(XlmWarning):
    """A card file that cannot be read, or a card name defined twice: left out, the other cards still work."""


@dataclass(kw_only=True)
class CardStore:
    """The cards on the search path, and why the names of the broken ones cannot be used."""

    cards: dict[str, AssetCard] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)  # a name a broken file or a duplicate would define -> why
    skipped_files: list[Path] = field(default_factory=list)


def user_card_dir() -> Path:
    """``$XLM_USER_ASSET_DIR``, else ``$XDG_CONFIG_HOME/xlm/cards`` (``~/.config/xlm/cards``)."""
    root = os.environ.get("XLM_USER_ASSET_DIR")
    return Path(root) if root else Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "xlm" / "cards"


def add_card_dir(path: str | Path) -> None:
    """Put a directory of cards (e.g. an external family's assets/cards) on the search path."""
    path = Path(path)
    if path not in _extra_dirs:
        _extra_dirs.append(path)


def card_dirs() -> list[Path]:
    from xlm.plugins import external_card_dirs  # discovers external families the first time

    env = [Path(p) for p in os.environ.get("XLM_ASSET_PATH", "").split(":") if p]
    return [cards_dir(), user_card_dir(), *env, *_extra_dirs, *external_card_dirs()]


def read_store() -> CardStore:
    """Every card on the search path; each broken file and duplicate name reported once, as a BrokenCardWarning."""
    store = CardStore()
    found: dict[str, list[AssetCard]] = {}
    for directory in card_dirs():
        if not directory.is_dir():
            continue
        for file in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
            try:
                cards = read_card_file(file)
            except CardError as err:
                _skip(store, file, err)
                continue
            for card in cards:
                found.setdefault(card.name, []).append(card)
    user = user_card_dir()
    for name, defined in found.items():
        if any(card.source_file is not None and card.source_file.parent == user for card in defined):
            defined = [card for card in defined if not is_shipped(card)]  # the user's copy replaces a shipped card
        if len(defined) == 1:
            store.cards[name] = defined[0]
            store.broken.pop(name, None)  # a broken file's guessed name that a good card defines
        else:
            files = " and in ".join(str(card.source_file) for card in defined)
            why = f"card {name!r} is defined twice: in {files}; rename one"
            warnings.warn(f"skipped {why}", BrokenCardWarning, stacklevel=2)
            store.broken[name] = why
    return store


def _skip(store: CardStore, file: Path, err: CardError) -> None:
    warnings.warn(f"skipped {err}", BrokenCardWarning, stacklevel=3)
    store.skipped_files.append(file)
    for name in _names_in(file):
        store.broken.setdefault(name, f"its card file is broken: {err}")


def _names_in(file: Path) -> list[str]:
    """The names a broken card file would define, as far as it can be read; else its own name (`xlm cards add`
    names a card's file after it)."""
    try:
        docs = card_documents(file)
    except CardError:
        docs = []
    return [doc["name"] for doc in docs if isinstance(doc, dict) and isinstance(doc.get("name"), str)] or [file.stem]


def all_cards() -> dict[str, AssetCard]:
    """Every card on the search path, by name (`xlm.list_cards()`, `xlm cards list`); broken ones left out."""
    return read_store().cards


def is_shipped(card: AssetCard) -> bool:
    return card.source_file is not None and card.source_file.parent == cards_dir()


def resolve_card(name: str, store: CardStore | None = None) -> AssetCard:
    """The card `name` with its `base` chain merged in."""
    store = read_store() if store is None else store
    card = _get(name, store)
    chain = [name]
    while card.base is not None:
        if card.base in chain:
            raise CardError(f"card {name!r} has a cycle in its base chain: {' -> '.join([*chain, card.base])}")
        chain.append(card.base)
        card = card.merged_onto(_resolve_base(card, store))
    return card


def _resolve_base(card: AssetCard, store: CardStore) -> AssetCard:
    base = card.base or ""
    if base in store.broken and base not in store.cards:
        raise CardError(f"card {card.name!r} ({card.source_file}) names the base {base!r}, which cannot be used: "
                        f"{store.broken[base]}")
    if base not in store.cards:
        raise CardError(f"card {card.name!r} ({card.source_file}) names the base {base!r}, "
                        f"which is not a known card"
                        f"{_hint(base, store.cards)}")
    return store.cards[base]


def _close(name: str, cards: dict[str, AssetCard]) -> list[str]:
    return difflib.get_close_matches(name, list(cards), n=3, cutoff=0.5)


def _hint(name: str, cards: dict[str, AssetCard]) -> str:
    close = _close(name, cards)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _get(name: str, store: CardStore) -> AssetCard:
    cards = store.cards
    if name in store.broken and name not in cards:
        raise CardError(f"card {name!r} cannot be used: {store.broken[name]}")
    if name not in cards:
        family = families.family_of_arch(name)
        if family is not None:
            raise CardError(f"no card named {name!r}: {name!r} is an arch of family {family!r}, an untrained "
                            f"architecture, not a trained model; build one with xlm.create_model({name!r}, "
                            f"vocab_size=...) or train it with `xlm train --arch {name}`; trained models are "
                            f"cards ({', '.join(_close(name, cards)) or '`xlm cards list`'})")
        skipped = f"; skipped as broken: {', '.join(map(str, store.skipped_files))}" if store.skipped_files else ""
        raise UnknownCardError(f"no card named {name!r}{_hint(name, cards)} (cards are read from "
                               f"{', '.join(str(d) for d in card_dirs())}{skipped}; `xlm cards list` shows them)")
    return cards[name]


def user_card_file(name: str, store: CardStore, *, force: bool, replaces_shipped: bool = False) -> Path:
    """Where card `name` goes in the user's card dir, once it is sure that writing there loses nothing: the name is
    a card name, no other file defines it (but a shipped card, where `replaces_shipped`), and the file there is
    replaced only with `force`, and only when it holds that one card."""
    check_card_name(name, "--name")
    target = user_card_dir() / f"{name}.yaml"
    existing = store.cards.get(name)
    if existing is not None and existing.source_file != target and not (replaces_shipped and is_shipped(existing)):
        raise CardError(f"card {name!r} is defined in {existing.source_file}; writing it to {target} would define it "
                        f"twice: pass --name to choose another name")
    if target.exists():
        try:
            others = sorted({str(doc.get("name")) for doc in card_documents(target)
                             if isinstance(doc, dict) and doc.get("name") != name})
        except CardError as err:
            raise PathExistsError(f"{target} exists and cannot be read ({err}); move it away to write card "
                                  f"{name!r} there") from None
        if others:
            raise PathExistsError(f"{target} holds other cards ({', '.join(others)}); replacing it would lose them: "
                                  f"pass --name to choose another name")
        if not force:
            raise PathExistsError(f"{target} already exists; pass --force to replace it")
    return target


def write_user_card(target: Path, card: dict[str, Any]) -> None:
    """Writes a card file whole or not at all (a temp file renamed into place)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(yaml.safe_dump(card, sort_keys=False))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
