"""Sorting: read a shuffled list of distinct numbers, write it in increasing order.

A task with long outputs whose every part is decided locally: the tokens that belong between
two written numbers are exactly the prompt's numbers lying between them. That makes it the
task on which an insertion model can fill many gaps per call (on the star tasks an ILM step
cannot save more than the targets' short length allows; see `python -m benchmarks.bench
ilm_multi`). Examples are generated locally and deterministically from a seed, then cached on
disk as Hugging Face datasets, like the star tasks.

Text format (space separated numbers)::

    prompt = "17 3 42 8 ..."     (num_items distinct numbers from range(num_values), shuffled)
    target = "3 8 17 42 ..."     (the same numbers, increasing)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xlm.data.disk_cache import CacheWarning, cached_dataset, default_cache_root
from xlm.data.metrics import exact_match, token_accuracy
from xlm.data.tokenizers import WordTokenizer
from xlm.registry import UnknownNameError, unknown_name_message

from .generated import SPLITS, cache_entry_name, checked_seed, split_rng

__all__ = ["CACHE_FORMAT_VERSION", "SORT_TASKS", "SPLITS", "SortCacheWarning", "SortTaskSpec", "generate_sort_examples",
           "load_sort", "max_prompt_tokens", "max_target_tokens", "prompt_problem", "score_sort_prediction",
           "sort_cache_path", "sort_tokenizer"]

#: Bumped whenever the generated data or its on-disk layout changes; part of the cache key.
CACHE_FORMAT_VERSION = 1


class SortCacheWarning(CacheWarning):
    """A cached sort dataset could not be read and is being regenerated."""


@dataclass(frozen=True, kw_only=True)
class SortTaskSpec:
    """Every parameter of one sort task; all of them enter the cache key."""

    name: str
    num_items: int  # numbers per list
    num_values: int  # the numbers are drawn from range(num_values), without repeats
    train_size: int = 50_000
    validation_size: int = 100
    test_size: int = 5_000

    def __post_init__(self) -> None:
        if not 1 <= self.num_items <= self.num_values:
            raise ValueError(f"{self.name}: need 1 <= num_items <= num_values (distinct numbers), "
                             f"got num_items={self.num_items}, num_values={self.num_values}")
        for split in SPLITS:
            if getattr(self, f"{split}_size") < 0:
                raise ValueError(f"{self.name}: {split}_size must be >= 0")


SORT_TASKS: dict[str, SortTaskSpec] = {spec.name: spec for spec in (
    SortTaskSpec(name="sort", num_items=40, num_values=100),
)}


def _spec(task: str | SortTaskSpec) -> SortTaskSpec:
    if isinstance(task, SortTaskSpec):
        return task
    try:
        return SORT_TASKS[task]
    except (KeyError, TypeError):
        raise UnknownNameError(unknown_name_message("sort task", str(task), list(SORT_TASKS))) from None


def _split_size(spec: SortTaskSpec, split: str) -> int:
    if split not in SPLITS:
        raise UnknownNameError(unknown_name_message("split", str(split), list(SPLITS)))
    return getattr(spec, f"{split}_size")


def sort_tokenizer(task: str | SortTaskSpec) -> WordTokenizer:
    """Word tokenizer whose words are the numbers ``"0" .. str(num_values - 1)``."""
    return WordTokenizer([str(i) for i in range(_spec(task).num_values)])


def max_prompt_tokens(task: str | SortTaskSpec) -> int:
    return _spec(task).num_items


def max_target_tokens(task: str | SortTaskSpec) -> int:
    return _spec(task).num_items


def prompt_problem(task: str | SortTaskSpec, prompt: str) -> str | None:
    """What makes `prompt` unlike the task's prompts (`num_items` distinct numbers below `num_values`), in one
    phrase, or None."""
    spec = _spec(task)
    words = prompt.split()
    shape = f"{spec.name} prompts are {spec.num_items} distinct numbers from 0 to {spec.num_values - 1}"
    if len(words) != spec.num_items:
        return f"it has {len(words)} words, but {shape}"
    if not all(w.isascii() and w.isdigit() and int(w) < spec.num_values for w in words) or len(set(words)) < len(words):
        return f"its words are not distinct numbers from 0 to {spec.num_values - 1}; {shape}"
    return None


def generate_sort_examples(task: str | SortTaskSpec, num_examples: int, rng: np.random.Generator) -> dict[str, list]:
    """``num_examples`` lists drawn from ``rng``, as dataset columns ``prompt`` and ``target``."""
    spec = _spec(task)
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    shuffled = np.argsort(rng.random((num_examples, spec.num_values)), axis=1)[:, :spec.num_items]
    return {"prompt": [" ".join(map(str, row)) for row in shuffled.tolist()],
            "target": [" ".join(map(str, row)) for row in np.sort(shuffled, axis=1).tolist()]}


def _features():
    from datasets import Features, Value

    return Features({"prompt": Value("string"), "target": Value("string")})


def sort_cache_path(task: str | SortTaskSpec, split: str, seed: int = 42, *,
                    cache_dir: str | os.PathLike | None = None) -> Path:
    """The directory :func:`load_sort` keeps this split in (keyed by every spec field, split, seed, format)."""
    spec = _spec(task)
    _split_size(spec, split)
    root = Path(cache_dir) if cache_dir is not None else default_cache_root() / "sort"
    return root / cache_entry_name(spec, split, seed, CACHE_FORMAT_VERSION)


def load_sort(task: str | SortTaskSpec, split: str, seed: int = 42, *, cache_dir: str | os.PathLike | None = None):
    """One split of a sort task as a ``datasets.Dataset`` with ``prompt`` and ``target`` columns
    (generated once, then read from the cache; an unreadable cache is rebuilt with a warning)."""
    from datasets import Dataset

    spec = _spec(task)
    size = _split_size(spec, split)
    seed = checked_seed(seed)

    def build():
        examples = generate_sort_examples(spec, size, split_rng(spec.name, split, seed))
        return Dataset.from_dict(examples, features=_features())

    def check(ds) -> None:
        if ds.num_rows != size or ds.features != _features():
            raise ValueError(f"expected {size} rows with features {_features()}, found {ds.num_rows}: {ds.features}")

    return cached_dataset(sort_cache_path(spec, split, seed, cache_dir=cache_dir), build, check,
                          warning=SortCacheWarning)


def score_sort_prediction(pred_text: str, example: Mapping[str, Any]) -> dict[str, float]:
    """``exact_match`` and ``token_accuracy`` (over whitespace words) of one prediction."""
    pred_words = pred_text.split() if isinstance(pred_text, str) else []
    target_words = example["target"].split()
    return {"exact_match": exact_match(pred_words, target_words),
            "token_accuracy": token_accuracy(pred_words, target_words)}
