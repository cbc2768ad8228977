"""xlm cards list | show NAME | add RUN_DIR --name NAME [--force] | download NAME | pin NAME [--name NEW] [--force]"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from collections.abc import Sequence

import yaml

from xlm.errors import reports_user_errors
from xlm.run_dir import read_run_config

from .card import CardError
from .card_files import card_files, fetch_card_file
from .manifest import measure_manifest
from .pin import pin_card
from .store import all_cards, read_store, resolve_card, user_card_file, write_user_card


def _list() -> int:
    cards = all_cards()
    if not cards:
        print("no cards found")
    width = max((len(n) for n in cards), default=0)
    for name in sorted(cards):
        card = cards[name]
        what = card.model_arch or card.model_family or (f"base {card.base}" if card.base else "")
        print(f"{name:<{width}}  {what:<12}  {card.description or ''}  [{card.source_file}]")
    return 0


def _show(name: str) -> int:
    card = resolve_card(name)
    fields = {k: v for k, v in asdict(card).items() if v not in (None, {}) and k != "source_file"}
    print(f"# {card.source_file}")
    print(yaml.safe_dump({k: str(v) if isinstance(v, Path) else v for k, v in fields.items()}, sort_keys=False), end="")
    return 0


def _describe_run(config: dict, run_dir: Path) -> str:
    """'arlm_star trained on star_easy (runs/x)'; an export of another layout's checkpoint knows only its family."""
    what = config.get("arch") or f"{config['family']} model"
    task = f" trained on {config['task']}" if config.get("task") else ""
    return f"{what}{task} ({run_dir})"


def card_for_run(run_dir: Path, name: str, description: str | None = None) -> dict:
    """The card of a run or export dir: its checkpoint is the dir itself, read in xlm's format, and pinned by the
    manifest of the files loading reads from it."""
    config = read_run_config(run_dir)
    card = {"name": name, "model_family": config["family"], "model_arch": config["arch"],
            "checkpoint": str(run_dir.resolve()), "checkpoint_format": "xlm", "task": config.get("task"),
            "description": description or _describe_run(config, run_dir),
            "manifest": measure_manifest(run_dir)}
    return {k: v for k, v in card.items() if v is not None}


def _add(run_dir: Path, name: str, description: str | None, force: bool) -> int:
    target = user_card_file(name, read_store(), force=force)
    write_user_card(target, card_for_run(run_dir, name, description))
    print(f"wrote {target}; load it with xlm.load_model({name!r})")
    return 0


def _download(name: str) -> int:
    card = resolve_card(name)
    files = card_files(card)
    if not files:
        raise CardError(f"card {name!r} ({card.source_file}) loads no files")
    for file in files.values():
        print(f"{file.role}: {fetch_card_file(card, file)}")
    return 0


def _pin(name: str, as_name: str | None, force: bool) -> int:
    target = pin_card(name, as_name=as_name, force=force)
    print(f"wrote {target}: every file of {name!r} pinned by sha256; load it with xlm.load_model("
          f"{(as_name or name)!r})")
    return 0


@reports_user_errors
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="xlm cards", description="List, show and add asset cards.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every card on the search path")
    show = sub.add_parser("show", help="one card, its base chain merged")
    show.add_argument("name")
    add = sub.add_parser("add", help="register a run or export dir as a card in your user dir, its files pinned by "
                                     "a manifest")
    add.add_argument("run_dir", type=Path)
    add.add_argument("--name", required=True)
    add.add_argument("--description", default=None)
    add.add_argument("--force", action="store_true", help="replace your card file of that name")
    download = sub.add_parser("download", help="fetch every file a card loads into the cache (for offline use)")
    download.add_argument("name")
    pin = sub.add_parser("pin", help="copy a card to your user dir with every file it loads pinned by sha256, "
                                     "measured on the files already in the cache")
    pin.add_argument("name")
    pin.add_argument("--name", dest="as_name", default=None, help="the copy's name (default: the card's own)")
    pin.add_argument("--force", action="store_true", help="replace an existing copy, or pins that differ")
    args = p.parse_args(argv)
    if args.command == "list":
        return _list()
    if args.command == "show":
        return _show(args.name)
    if args.command == "download":
        return _download(args.name)
    if args.command == "pin":
        return _pin(args.name, args.as_name, args.force)
    return _add(args.run_dir, args.name, args.description, args.force)


if __name__ == "__main__":
    sys.exit(main())
