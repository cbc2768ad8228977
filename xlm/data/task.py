"""Tasks: a tokenizer, tokenized splits and a scorer, looked up by name.

A task hides where its data comes from (generated star graphs now, text corpora later);
recipes only see `prompt_ids`/`target_ids` (seq2seq) or `input_ids` (LM) rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

import datasets

from xlm.registry import UnknownNameError, unknown_name_message

from .tokenizers import Tokenizer


@dataclass(kw_only=True)
class TaskConfig:
    name: str = "star_easy"
    seed: int = 42  # the data seed (the model seed is the recipe's `seed`)
    train_size: int | None = None  # first N training examples only (debug, overfit)
    eval_size: int | None = None  # first N examples of an evaluation split during training


class Task(Protocol):
    name: str
    tokenizer: Tokenizer
    is_seq2seq: bool
    max_seq_len: int  # longest training row: prompt + [BOS] + target + [EOS]
    max_new_tokens: int  # longest target + [EOS]

    def dataset(self, split: str) -> datasets.Dataset: ...

    def score(self, pred_text: str, example: Mapping[str, Any]) -> dict[str, float]: ...


def _take(ds: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    return ds if limit is None or limit >= len(ds) else ds.select(range(limit))


class StarTask:
    """A star-graph path-finding task (xlm.data.tasks.star), tokenized with the word tokenizer."""

    is_seq2seq = True

    def __init__(self, config: TaskConfig) -> None:
        from .tasks import star

        self.config = config
        self.name = config.name
        self.tokenizer = star.star_tokenizer(config.name)
        self.max_new_tokens = star.max_target_tokens(config.name) + 1
        self.max_seq_len = star.max_prompt_tokens(config.name) + 1 + self.max_new_tokens
        self._load = star.load_star
        self._score = star.score_star_prediction

    def dataset(self, split: str) -> datasets.Dataset:
        raw = self._load(self.config.name, split, seed=self.config.seed)
        limit = self.config.train_size if split == "train" else None
        tokenizer = self.tokenizer

        def tokenize(batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
            return {"prompt_ids": [tokenizer.encode(p) for p in batch["prompt"]],
                    "target_ids": [tokenizer.encode(t) for t in batch["target"]]}

        return _take(raw, limit).map(tokenize, batched=True, desc=f"tokenizing {self.name}/{split}")

    def score(self, pred_text: str, example: Mapping[str, Any]) -> dict[str, float]:
        return self._score(pred_text, example)


TASK_BUILDERS: dict[str, Callable[[TaskConfig], Task]] = {
    "star_easy": StarTask,
    "star_medium": StarTask,
    "star_hard": StarTask,
}


def build_task(config: TaskConfig) -> Task:
    try:
        builder = TASK_BUILDERS[config.name]
    except KeyError:
        raise UnknownNameError(unknown_name_message("task", config.name, list(TASK_BUILDERS))) from None
    return builder(config)
