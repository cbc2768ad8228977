"""Asset cards, the card store, verified downloads, and loading models from any of them."""

from .card import AssetCard, CardError, read_card_file
from .download import ChecksumError, DownloadError, fetch
from .generator import Generator
from .loading import ResolvedSource, load_generator, load_model, load_tokenizer, resolve_source
from .store import add_card_dir, all_cards, card_dirs, resolve_card, user_card_dir

__all__ = ["AssetCard", "CardError", "ChecksumError", "DownloadError", "Generator", "ResolvedSource", "add_card_dir",
           "all_cards", "card_dirs", "fetch", "load_generator", "load_model", "load_tokenizer", "read_card_file",
           "resolve_card", "resolve_source", "user_card_dir"]
