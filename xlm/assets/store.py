"""The card store: every card on the search path, by name.

Search path, in order: the shipped cards (``assets/cards/``, `xlm.shipped.cards_dir`), the user's directory
(``$XLM_USER_ASSET_DIR``, else ``~/.config/xlm/cards``), each directory of ``$XLM_ASSET_PATH``
(colon-separated), and directories contributed by external families. A name defined twice is
an error naming both files, except that a card in the user's directory replaces a shipped card of
its name (`xlm cards pin` writes such copies). Read fresh on every lookup, so a card added a moment
ago is seen. Card names and arch names are separate: a card is a trained model, an arch an untrained
architecture that `xlm.create_model` and `xlm train --arch` take.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from xlm.registry import families
from xlm.shipped import cards_dir

from .card import AssetCard, CardError, read_card_file

_extra_dirs: list[Path] = []


def user_card_dir() -> Path:
    root = os.environ.get("XLM_USER_ASSET_DIR")
    return Path(root) if root else Path.home() / ".config" / "xlm" / "cards"


def add_card_dir(path: str | Path) -> None:
    """Put a directory of cards (e.g. an external family's assets/cards) on the search path."""
    path = Path(path)
    if path not in _extra_dirs:
        _extra_dirs.append(path)


def card_dirs() -> list[Path]:
    from xlm.plugins import external_card_dirs  # discovers external families the first time

    env = [Path(p) for p in os.environ.get("XLM_ASSET_PATH", "").split(":") if p]
    return [cards_dir(), user_card_dir(), *env, *_extra_dirs, *external_card_dirs()]


def all_cards() -> dict[str, AssetCard]:
    """Every card on the search path, by name (`xlm.list_cards()`, `xlm cards list`)."""
    cards: dict[str, AssetCard] = {}
    user = user_card_dir()
    for directory in card_dirs():
        if not directory.is_dir():
            continue
        for file in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
            for card in read_card_file(file):
                if card.name in cards and not (directory == user and is_shipped(cards[card.name])):
                    raise CardError(f"card {card.name!r} is defined twice: in {cards[card.name].source_file} "
                                    f"and in {file}; rename one")
                cards[card.name] = card
    return cards


def is_shipped(card: AssetCard) -> bool:
    return card.source_file is not None and card.source_file.parent == cards_dir()


def resolve_card(name: str, cards: dict[str, AssetCard] | None = None) -> AssetCard:
    """The card `name` with its `base` chain merged in."""
    cards = all_cards() if cards is None else cards
    card = _get(name, cards)
    chain = [name]
    while card.base is not None:
        if card.base in chain:
            raise CardError(f"card {name!r} has a cycle in its base chain: {' -> '.join([*chain, card.base])}")
        chain.append(card.base)
        card = card.merged_onto(_resolve_base(card, cards))
    return card


def _resolve_base(card: AssetCard, cards: dict[str, AssetCard]) -> AssetCard:
    if card.base not in cards:
        raise CardError(f"card {card.name!r} ({card.source_file}) names the base {card.base!r}, "
                        f"which is not a known card"
                        f"{_hint(card.base or '', cards)}")
    return cards[card.base]


def _close(name: str, cards: dict[str, AssetCard]) -> list[str]:
    return difflib.get_close_matches(name, list(cards), n=3, cutoff=0.5)


def _hint(name: str, cards: dict[str, AssetCard]) -> str:
    close = _close(name, cards)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _get(name: str, cards: dict[str, AssetCard]) -> AssetCard:
    if name not in cards:
        family = families.family_of_arch(name)
        if family is not None:
            raise CardError(f"no card named {name!r}: {name!r} is an arch of family {family!r}, an untrained "
                            f"architecture, not a trained model; build one with xlm.create_model({name!r}, "
                            f"vocab_size=...) or train it with `xlm train --arch {name}`; trained models are "
                            f"cards ({', '.join(_close(name, cards)) or '`xlm cards list`'})")
        raise CardError(f"no card named {name!r}{_hint(name, cards)} (cards are read from "
                        f"{', '.join(str(d) for d in card_dirs())}; `xlm cards list` shows them)")
    return cards[name]
