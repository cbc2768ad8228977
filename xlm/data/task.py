"""What every task is: a config with the fields all tasks share, and the `Task` protocol.

A task hides where its data comes from (generated star graphs or lists to sort, text corpora);
recipes only see `prompt_ids`/`target_ids` (seq2seq) or `input_ids` (LM) rows. Tasks are
registered by name (`xlm.registry.register_task`); `xlm.data.tasks` registers the core ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .tokenizers import Tokenizer

if TYPE_CHECKING:
    import datasets


@dataclass(kw_only=True)
class TaskConfig:
    """The settings every task has; a task with more subclasses it (e.g. the text task's `TextTaskConfig`)."""

    name: str = "star_easy"
    seed: int = 42  # the data seed (the model seed is the recipe's `seed`)
    train_size: int | None = None  # first N training examples only (debug, overfit)
    eval_size: int | None = None  # first N examples of an evaluation split during training


class Task(Protocol):
    name: str
    tokenizer: Tokenizer
    is_seq2seq: bool  # rows of `prompt_ids`/`target_ids` scored by `score`, else `input_ids` scored by the loss
    max_seq_len: int  # longest training row: prompt + [BOS] + target + [EOS]
    max_new_tokens: int  # longest target + [EOS]

    def dataset(self, split: str) -> datasets.Dataset:
        """A tokenized split ("train", "validation" or "test") drawn with the config's data seed."""
        ...

    def score(self, pred_text: str, example: Mapping[str, Any]) -> dict[str, float]:
        """The prediction metrics (e.g. exact_match) of a decoded prediction against its example."""
        ...


def take(ds: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    """The first `limit` rows (all of them when `limit` is None)."""
    return ds if limit is None or limit >= len(ds) else ds.select(range(limit))
