"""What the generated tasks (star graphs, sorting) share: split names, one RNG stream per
(task, split, seed), the cache entry name keyed by every spec field, and the seed check."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from typing import Any

import numpy as np

#: Split names, in the order of their index in the RNG seed.
SPLITS: tuple[str, ...] = ("train", "validation", "test")


def split_rng(task_name: str, split: str, seed: int) -> np.random.Generator:
    """The stream a split is drawn from: independent per task name, split and seed."""
    return np.random.default_rng([seed, SPLITS.index(split), zlib.crc32(task_name.encode("utf-8"))])


def cache_entry_name(spec: Any, split: str, seed: int, format_version: int) -> str:
    """`<name>-<split>-seed<seed>-<key>`, the key hashing every field of the (dataclass) spec, the
    split, the seed and the generator's format version, so a change to any of them is a new entry."""
    payload = {"format_version": format_version, "spec": dataclasses.asdict(spec), "split": split, "seed": seed}
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    return f"{spec.name}-{split}-seed{seed}-{key}"


def checked_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)
