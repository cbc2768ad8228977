"""The core tasks, registered by name on import (as `xlm.models` registers the core families), and
building any registered task from its config.

The star tasks and sort are generated locally (`star.py`, `sort.py` expose their functions;
`GeneratedSource` binds them), text comes from a corpus (`text.py`). Another task registers
itself with `xlm.registry.register_task` (an external family's package may do so).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from functools import partial
from typing import Any

from xlm.data.task import Task, TaskConfig
from xlm.data.tokenizers import Tokenizer
from xlm.errors import InvalidValueError
from xlm.registry import get_task, register_task

from . import sort, star
from .generated import GeneratedSource, GeneratedTask
from .text import TextTask, TextTaskConfig

STAR = GeneratedSource(tokenizer=star.star_tokenizer, load=star.load_star, score=star.score_star_prediction,
                       max_prompt_tokens=star.max_prompt_tokens, max_target_tokens=star.max_target_tokens,
                       probe=star.probe_star)
SORT = GeneratedSource(tokenizer=sort.sort_tokenizer, load=sort.load_sort, score=sort.score_sort_prediction,
                       max_prompt_tokens=sort.max_prompt_tokens, max_target_tokens=sort.max_target_tokens)


def _star_description(spec: star.StarTaskSpec) -> str:
    shape = (f"{spec.degree} arms of {spec.path_nodes} nodes" if spec.generator == "simple" else
             f"{spec.degree} chains of {spec.min_arm_nodes} to {spec.max_arm_nodes} nodes through one centre")
    return f"path-finding on a star graph, {shape}"


for _star in star.STAR_TASKS.values():
    register_task(_star.name, config_class=TaskConfig, builder=partial(GeneratedTask, source=STAR),
                  description=_star_description(_star))
for _sort in sort.SORT_TASKS.values():
    register_task(_sort.name, config_class=TaskConfig, builder=partial(GeneratedTask, source=SORT),
                  description=f"write a shuffled list of {_sort.num_items} distinct numbers below "
                              f"{_sort.num_values} in increasing order")
register_task("text", config_class=TextTaskConfig, builder=TextTask,
              description="language modelling on a corpus: task.data_files=PATH or task.dataset=NAME")


def task_config(name: str, **values: Any) -> TaskConfig:
    """A fresh config of the registered task `name` (its own config class), with `values` set."""
    return get_task(name).config_class(name=name, **values)


def reads_with_given_tokenizer(name: str) -> bool:
    """Whether task `name`'s builder takes a tokenizer to read its text with (text does; star and sort have
    their own vocabularies)."""
    return "tokenizer" in inspect.signature(get_task(name).builder).parameters


def reads_with_model_tokenizer(config: TaskConfig) -> bool:
    """Whether a model's own tokenizer reads this task's text: it takes one, and no task.tokenizer is set (one
    would otherwise be trained on the corpus)."""
    return getattr(config, "tokenizer", "") is None and reads_with_given_tokenizer(config.name)


def build_task(config: TaskConfig, *, tokenizer: Tokenizer | None = None) -> Task:
    """The task `config.name` names, built by its registered builder; `tokenizer`, for a task that reads text
    with the tokenizer it is given (text: a model from another layout, such as an HF GPT-2, scored on a corpus
    with its own tokenizer)."""
    registered = get_task(config.name)
    if not isinstance(config, registered.config_class):
        raise TypeError(f"task {config.name!r} is configured by {registered.config_class.__name__}, got a "
                        f"{type(config).__name__}; make one with xlm.data.tasks.task_config({config.name!r}, ...)")
    if tokenizer is None:
        return registered.builder(config)
    if not reads_with_given_tokenizer(config.name):
        raise InvalidValueError(f"task {config.name!r} has its own vocabulary, which a model's own tokenizer cannot "
                                f"read; score such a model on text (--task text task.data_files=FILE)")
    return registered.builder(config, tokenizer=tokenizer)


def prompt_problem(task: str, prompt: str) -> str | None:
    """Why `prompt` does not look like the prompts of `task` (a star or sort task), in one phrase, or None
    (also for a task without such a check): a model answers such a prompt all the same, and meaninglessly."""
    if task in star.STAR_TASKS:
        return star.prompt_problem(task, prompt)
    if task in sort.SORT_TASKS:
        return sort.prompt_problem(task, prompt)
    return None


#: Before tasks had their own config classes, every run recorded the text task's fields in its task section.
_FLAT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TextTaskConfig)}


def saved_task_config(values: Mapping[str, Any], where: str) -> TaskConfig:
    """The task config a run dir recorded (`train_config.task` of its config.json). A key the task's config
    class lacks is dropped when it is one of the flat section's fields at its default (runs written before
    tasks had their own config classes) and refused otherwise."""
    registered = get_task(values["name"])
    known = {f.name for f in dataclasses.fields(registered.config_class)}
    unknown = {k: v for k, v in values.items() if k not in known}
    stray = sorted(k for k, v in unknown.items() if k not in _FLAT_DEFAULTS or v != _FLAT_DEFAULTS[k])
    if stray:
        raise ValueError(f"{where} sets {stray}, which the {values['name']!r} task's "
                         f"{registered.config_class.__name__} does not have (its keys: {sorted(known)})")
    return registered.config_class(**{k: v for k, v in values.items() if k in known})
