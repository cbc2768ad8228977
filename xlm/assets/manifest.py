"""A directory checkpoint's manifest: each file loading may read from it, with its sha256.

One hash cannot pin a directory (a run or export dir, an HF model dir), so a card whose checkpoint is one pins it
file by file under `manifest:`, which `xlm cards add` writes. Loading reads the weights, config and tokenizer files
at the top of such a dir (and the shards an index names): every file of those kinds there must be in the manifest,
so that none can be swapped or slipped in unpinned. Files loading never reads (metrics, evaluation results, a
run's training checkpoints) need not be listed, so `xlm eval` can still write its results beside the weights.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from pathlib import Path

from xlm.errors import CheckpointReadError, PathNotFoundError

from .download import ChecksumError, sha256_of, verify_sha256

__all__ = ["READ_WHEN_LOADING", "measure_manifest", "verify_manifest"]

#: Names of the files that loading a checkpoint dir may read: xlm's run dirs, HF model dirs and their tokenizers,
#: and single-file checkpoints of every layout the converters take (`xlm.interop.readers`).
READ_WHEN_LOADING = ("config.json", "*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.index.json",
                     "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _read_when_loading(directory: Path) -> list[str]:
    """The files at the top of `directory` that loading may read, and the shards their indexes name."""
    top = sorted(p.name for p in directory.iterdir()
                 if p.is_file() and any(fnmatch.fnmatch(p.name, pattern) for pattern in READ_WHEN_LOADING))
    shards = [shard for name in top if name.endswith(".index.json") for shard in _shards(directory / name)]
    return sorted({*top, *shards})


def _shards(index: Path) -> list[str]:
    """The files inside the dir that a sharded index names (one naming others is refused when it is read)."""
    from xlm.interop.readers import index_weight_map  # torch comes with it: only for a dir that has an index

    try:
        names = set(index_weight_map(index).values())
    except CheckpointReadError:
        return []
    home = index.parent.resolve()
    shards = ((index.parent / name).resolve() for name in names)
    return sorted(s.relative_to(home).as_posix() for s in shards if s.is_relative_to(home) and s.is_file())


def measure_manifest(directory: Path) -> dict[str, str]:
    """The manifest of `directory` as it is now."""
    return {name: sha256_of(directory / name) for name in _read_when_loading(directory)}


def verify_manifest(directory: Path, manifest: Mapping[str, str], *, card: str) -> None:
    """Every file loading may read from `directory` is in the card's manifest, and every file listed there has its
    sha256."""
    unlisted = [name for name in _read_when_loading(directory) if name not in manifest]
    if unlisted:
        raise ChecksumError(f"card {card!r}: {directory} holds {', '.join(unlisted)}, which loading may read but the "
                            f"card's manifest does not pin; if they belong there, pin the dir again (`xlm cards pin "
                            f"{card} --force` writes the manifest of the files there now)")
    for name, expected in manifest.items():
        path = directory / name
        if not path.is_file():
            raise PathNotFoundError(f"card {card!r}: its manifest pins {name}, which is not in {directory}")
        verify_sha256(path, expected, uri=name, card=card, delete=False)
