"""A task registered by an external family's package: found by discovery, listed, composed with
its own preset from the family's configs/, and model.vocab_size / sampler.max_new_tokens pinned by
an experiment YAML there kept (not replaced by the task's)."""

import sys
import textwrap

import pytest
import yaml

from xlm.plugins import discovery, load_external_models
from xlm.plugins.scaffold import scaffold
from xlm.recipes import train
from xlm.registry import families, get_task, list_tasks, tasks

TASK_MODULE = '''
import datasets
from dataclasses import dataclass

from xlm.data.task import TaskConfig
from xlm.data.tokenizers import WordTokenizer
from xlm.registry import register_task


@dataclass(kw_only=True)
class CountConfig(TaskConfig):
    name: str = "toy_count"
    length: int = 3


class CountTask:
    is_seq2seq = True

    def __init__(self, config):
        self.config, self.name = config, config.name
        self.tokenizer = WordTokenizer([str(d) for d in range(20)])
        self.max_new_tokens = config.length + 1
        self.max_seq_len = 2 * config.length + 2

    def dataset(self, split):
        prompts = [" ".join(str(i + k) for k in range(self.config.length)) for i in range(8)]
        ids = [self.tokenizer.encode(p) for p in prompts]
        return datasets.Dataset.from_dict({"prompt": prompts, "target": prompts, "prompt_ids": ids,
                                           "target_ids": ids})

    def score(self, pred_text, example):
        return {"exact_match": float(pred_text == example["target"])}


register_task("toy_count", config_class=CountConfig, builder=CountTask, description="copy a count")
'''


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("XLM_MODELS_PATH", "XLM_MODELS_PACKAGES", "XLM_MODELS_STRICT"):
        monkeypatch.delenv(var, raising=False)
    saved = (dict(families._families), dict(tasks._tasks), dict(discovery._loaded), list(sys.path), set(sys.modules))
    yield
    families._families.clear()
    families._families.update(saved[0])
    tasks._tasks.clear()
    tasks._tasks.update(saved[1])
    discovery._loaded.clear()
    discovery._loaded.update(saved[2])
    sys.path[:] = saved[3]
    for name in set(sys.modules) - saved[4]:
        del sys.modules[name]


def _dumped(capsys, *argv):
    assert train.main(["--arch", "arlm_tiny", "--task", "toy_count", "--dump-config", *argv]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_a_plugin_registers_a_task_with_its_presets(tmp_path, capsys):
    assert "toy_count" not in list_tasks()  # (a listing scans this dir, empty yet: the scan is not redone)
    scaffold("toy_tasks", tmp_path)
    package, configs = tmp_path / "toy_tasks" / "toy_tasks", tmp_path / "toy_tasks" / "configs"
    (package / "count_task.py").write_text(TASK_MODULE)
    with open(package / "__init__.py", "a") as f:
        f.write("\nfrom . import count_task  # noqa: F401,E402  (registers toy_count)\n")
    (configs / "task").mkdir()
    (configs / "task" / "toy_count.yaml").write_text("# @package _global_\ntask:\n  length: 5\n")
    (configs / "experiment" / "pin_sizes.yaml").write_text(textwrap.dedent("""\
        # @package _global_
        model:
          vocab_size: 40
        sampler:
          max_new_tokens: 9
        """))
    assert "toy_count" not in list_tasks()
    assert load_external_models() == ["toy_tasks"]
    assert "toy_count" in list_tasks() and "xlm_models.json" in get_task("toy_count").source

    fitted = _dumped(capsys)
    assert fitted["task"] == {"name": "toy_count", "seed": 42, "train_size": None, "eval_size": None, "length": 5}
    assert fitted["model"]["vocab_size"] == 27 and fitted["sampler"]["max_new_tokens"] == 6  # 7 special + 20 words
    pinned = _dumped(capsys, "--experiment", "pin_sizes")
    assert pinned["model"]["vocab_size"] == 40 and pinned["sampler"]["max_new_tokens"] == 9
    assert train.main(["--arch", "arlm_tiny", "--task", "toy_count", "--dump-config", "--experiment", "pin_sizes",
                       "model.vocab_size=10"]) == 2
    assert "model.vocab_size=10 (from the command line" in capsys.readouterr().err
