"""What the generated tasks (star graphs, sorting) share: split names, one RNG stream per
(task, split, seed), the cache entry name keyed by every spec field, the seed check, and the
`Task` that tokenizes their `prompt`/`target` text with the task's word tokenizer."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from xlm.data.task import TaskConfig, take
from xlm.data.tokenizers import Tokenizer

if TYPE_CHECKING:
    import datasets

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


@dataclasses.dataclass(frozen=True, kw_only=True)
class GeneratedSource:
    """The functions of one generated-task module, each taking the task name (`xlm.data.tasks` binds them)."""

    tokenizer: Callable[[str], Tokenizer]
    load: Callable[..., datasets.Dataset]  # (name, split, seed=...) -> `prompt`/`target` text columns
    score: Callable[[str, Mapping[str, Any]], dict[str, float]]  # (prediction, example) -> metrics
    max_prompt_tokens: Callable[[str], int]
    max_target_tokens: Callable[[str], int]
    # (a unit's target_probs, examples) -> per-example probe metrics; None: the task has no probe
    probe: Callable[[Callable[..., Any], Sequence[Mapping[str, Any]]], list[dict[str, float]]] | None = None


class GeneratedTask:
    """A seq2seq task generated on the fly from a seed, tokenized with its source's word tokenizer."""

    is_seq2seq = True

    def __init__(self, config: TaskConfig, *, source: GeneratedSource) -> None:
        self.config, self.source = config, source
        self.name = config.name
        self.tokenizer = source.tokenizer(config.name)
        self.max_new_tokens = source.max_target_tokens(config.name) + 1
        self.max_seq_len = source.max_prompt_tokens(config.name) + 1 + self.max_new_tokens

    def dataset(self, split: str) -> datasets.Dataset:
        raw = self.source.load(self.config.name, split, seed=self.config.seed)
        limit = self.config.train_size if split == "train" else None
        tokenizer = self.tokenizer

        def tokenize(batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
            return {"prompt_ids": [tokenizer.encode(p) for p in batch["prompt"]],
                    "target_ids": [tokenizer.encode(t) for t in batch["target"]]}

        return take(raw, limit).map(tokenize, batched=True, desc=f"tokenizing {self.name}/{split}")

    def score(self, pred_text: str, example: Mapping[str, Any]) -> dict[str, float]:
        return self.source.score(pred_text, example)

    def probe(self, unit: Any, examples: Sequence[Mapping[str, Any]]) -> list[dict[str, float]] | None:
        """Per-example probe metrics read from `unit.target_probs`; None when the task or the family has none."""
        target_probs = getattr(unit, "target_probs", None)
        if self.source.probe is None or target_probs is None:
            return None
        return self.source.probe(target_probs, examples)
