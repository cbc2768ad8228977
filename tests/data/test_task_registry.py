"""The task registry: names with close-match errors, config classes checked, the core tasks bound
explicitly."""

from dataclasses import dataclass

import pytest

from xlm.data.task import TaskConfig
from xlm.data.tasks import STAR, build_task, task_config
from xlm.data.tasks.generated import GeneratedTask
from xlm.data.tasks.text import TextTaskConfig
from xlm.registry import (DuplicateNameError, RegisteredTask, TaskRegistry, UnknownNameError, get_task, list_tasks,
                          tasks)

def test_core_tasks_are_registered_with_their_config_classes():
    assert {"star_easy", "star_medium", "star_hard", "sort", "text"} <= set(list_tasks())
    assert get_task("star_hard").config_class is TaskConfig and get_task("text").config_class is TextTaskConfig
    assert all(get_task(name).description for name in ("star_easy", "sort", "text"))
    assert get_task("sort").source == "core"


def test_unknown_task_names_close_matches():
    with pytest.raises(UnknownNameError) as info:
        get_task("star_eazy")
    assert "did you mean 'star_easy'" in str(info.value) and "text" in str(info.value)


def test_registry_refuses_duplicates_and_configs_without_a_name():
    registry = TaskRegistry()
    registry.register(tasks.get("sort"))
    with pytest.raises(DuplicateNameError, match="'sort' is registered twice"):
        registry.register(tasks.get("sort"))

    @dataclass
    class Nameless:
        size: int = 3

    with pytest.raises(TypeError, match="`name` field"):
        registry.register(RegisteredTask(name="nameless", config_class=Nameless, builder=lambda config: config))
    assert registry.names() == ["sort"]


def test_generated_tasks_bind_their_module_functions():
    task = build_task(task_config("star_easy", seed=3))
    assert isinstance(task, GeneratedTask) and task.source is STAR
    assert task.tokenizer.vocab_size == STAR.tokenizer("star_easy").vocab_size
    assert task.max_seq_len == STAR.max_prompt_tokens("star_easy") + 1 + STAR.max_target_tokens("star_easy") + 1


def test_build_task_wants_the_registered_config_class():
    with pytest.raises(TypeError, match="TextTaskConfig, got a TaskConfig"):
        build_task(TaskConfig(name="text"))
    assert type(task_config("text", block_size=64)) is TextTaskConfig
    with pytest.raises(TypeError):
        task_config("sort", block_size=64)
