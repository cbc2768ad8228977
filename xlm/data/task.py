"""Tasks: a tokenizer, tokenized splits and a scorer, looked up by name.

A task hides where its data comes from (generated star graphs or lists to sort, text corpora);
recipes only see `prompt_ids`/`target_ids` (seq2seq) or `input_ids` (LM) rows.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import datasets

from xlm.registry import UnknownNameError, unknown_name_message

from .tokenizers import Tokenizer


@dataclass(kw_only=True)
class TaskConfig:
    name: str = "star_easy"
    seed: int = 42  # the data seed (the model seed is the recipe's `seed`)
    train_size: int | None = None  # first N training examples only (debug, overfit)
    eval_size: int | None = None  # first N examples of an evaluation split during training
    # -- the text task (--task text) --
    data_files: str | None = None  # comma-separated files or globs (.txt one document per line, .jsonl, ...)
    dataset: str | None = None  # or an HF dataset name / local dataset dir
    dataset_config: str | None = None
    text_column: str = "text"
    tokenizer: str | None = None  # a SentencePiece .model or HF tokenizer.json; None = train one on the corpus
    tokenizer_vocab_size: int = 4096  # size of the SentencePiece model trained when `tokenizer` is None
    block_size: int = 128  # tokens per row ([BOS]/[EOS] included)
    packing: bool = True  # concatenate documents into full blocks (else one truncated document per row)
    held_out_fraction: float = 0.05  # validation and test slices of train when the source has none
    streaming: bool = False  # read, tokenize and pack the training text on the fly (corpora larger than memory)
    streaming_eval_documents: int = 1000  # streaming: validation/test are their split's first N documents


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


class GeneratedTask:
    """A task generated on the fly by a module of xlm.data.tasks (star graphs, sorting), tokenized
    with that module's word tokenizer; `kind` names the module."""

    is_seq2seq = True

    def __init__(self, config: TaskConfig, kind: str) -> None:
        source = importlib.import_module(f"{__package__}.tasks.{kind}")
        self.config = config
        self.name = config.name
        self.tokenizer = getattr(source, f"{kind}_tokenizer")(config.name)
        self.max_new_tokens = source.max_target_tokens(config.name) + 1
        self.max_seq_len = source.max_prompt_tokens(config.name) + 1 + self.max_new_tokens
        self._load = getattr(source, f"load_{kind}")
        self._score = getattr(source, f"score_{kind}_prediction")

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


class TextTask:
    """Language modelling on a corpus (xlm.data.tasks.text): rows of `input_ids` blocks, scored
    by the loss alone (NLL, or the NELBO bound of the diffusion/insertion families)."""

    is_seq2seq = False

    def __init__(self, config: TaskConfig) -> None:
        from .tasks import text

        self.config = config
        self.name = config.name
        self.source = text.TextSource(data_files=config.data_files, dataset=config.dataset,
                                      dataset_config=config.dataset_config, text_column=config.text_column,
                                      held_out_fraction=config.held_out_fraction, seed=config.seed)
        self.streaming = config.streaming
        if self.streaming and config.streaming_eval_documents < 1:
            raise ValueError(f"task.streaming_eval_documents must be >= 1, got {config.streaming_eval_documents}")
        self.tokenizer = (text.load_tokenizer_file(config.tokenizer) if config.tokenizer
                          else text.corpus_tokenizer(self.source, vocab_size=config.tokenizer_vocab_size,
                                                     streaming=self.streaming))
        self.max_seq_len = config.block_size
        self.max_new_tokens = config.block_size  # the length of an unconditional sample
        self._text = text

    def dataset(self, split: str) -> datasets.Dataset:
        if self.streaming:
            if split == "train":
                raise TypeError("with task.streaming=true the training split is a stream (TextTask.train_stream), "
                                "not a dataset")
            return self._text.streamed_eval_split(self.source, split, self.tokenizer,
                                                  block_size=self.config.block_size, packing=self.config.packing,
                                                  max_documents=self.config.streaming_eval_documents)
        ds = self._text.tokenized_split(self.source, split, self.tokenizer, block_size=self.config.block_size,
                                        packing=self.config.packing)
        return _take(ds, self.config.train_size if split == "train" else None)

    def train_stream(self, *, rank: int, world_size: int, num_workers: int, seed: int) -> Any:
        """This rank's training rows (`xlm.data.streaming.RowStream`): `next_rows(n)`, `state()`,
        `load_state(state)`. The shards are split between `world_size * max(1, num_workers)` readers;
        with task.train_size, each reader's pass over the corpus stops after its share of that many rows."""
        from .streaming import RowStream

        if not self.streaming:
            raise TypeError("train_stream needs task.streaming=true")
        factory = self._text.TextRowFactory(self.source, self.tokenizer, block_size=self.config.block_size,
                                            packing=self.config.packing, seed=seed,
                                            train_size=self.config.train_size)
        return RowStream(factory, rank=rank, world_size=world_size, num_workers=num_workers)

    def score(self, pred_text: str, example: Mapping[str, Any]) -> dict[str, float]:
        raise TypeError("the text task has no reference answers to score against; it is evaluated by its loss")


TASK_BUILDERS: dict[str, Callable[[TaskConfig], Task]] = {
    "star_easy": partial(GeneratedTask, kind="star"),
    "star_medium": partial(GeneratedTask, kind="star"),
    "star_hard": partial(GeneratedTask, kind="star"),
    "sort": partial(GeneratedTask, kind="sort"),
    "text": TextTask,
}


def build_task(config: TaskConfig) -> Task:
    try:
        builder = TASK_BUILDERS[config.name]
    except KeyError:
        raise UnknownNameError(unknown_name_message("task", config.name, list(TASK_BUILDERS))) from None
    return builder(config)
