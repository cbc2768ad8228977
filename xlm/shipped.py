"""Where the files shipped beside the code are: the Hydra presets and the asset cards.

In a checkout (and an editable install) they are the repository's top-level `configs/` and
`assets/cards/`, the single source. A built wheel carries copies of both inside the package,
as `xlm/_shipped/configs` and `xlm/_shipped/cards` (setup.py puts them there), so an installed
xlm finds the same files wherever it runs.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_IN_WHEEL = {"configs": "_shipped/configs", "cards": "_shipped/cards"}
_IN_CHECKOUT = {"configs": "configs", "cards": "assets/cards"}


def _shipped(name: str) -> Path:
    installed = _PACKAGE_DIR / _IN_WHEEL[name]
    if installed.is_dir():
        return installed
    checkout = _PACKAGE_DIR.parent / _IN_CHECKOUT[name]
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"xlm's shipped {name} are missing: neither {installed} (an installed wheel) nor "
                            f"{checkout} (a checkout) exists; reinstall xlm")


def configs_dir() -> Path:
    """The Hydra presets: train.yaml, arch/, task/, experiment/."""
    return _shipped("configs")


def cards_dir() -> Path:
    """The shipped asset cards and the small checkpoints they name."""
    return _shipped("cards")
