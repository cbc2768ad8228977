"""Tasks through the recipes: a task registered in-process trains, is listed by --help and is
evaluated from its run dir with no YAML anywhere; a run dir written with the old flat task
section still evaluates, and task configs read back from run dirs of either layout."""

import json
import random
from dataclasses import asdict, dataclass

import datasets
import pytest
import torch

import xlm
from xlm.data.task import TaskConfig
from xlm.data.tasks import saved_task_config
from xlm.data.tasks.star import star_tokenizer
from xlm.data.tasks.text import TextTaskConfig
from xlm.data.tokenizers import WordTokenizer
from xlm.recipes import evaluate, train
from xlm.registry import register_task, tasks
from xlm.run_dir import write_run_dir

#: A star run's task section as config.json recorded it before tasks had their own config classes.
FLAT_STAR = {"name": "star_easy", "seed": 7, "train_size": 256, "eval_size": 16, "data_files": None, "dataset": None,
             "dataset_config": None, "text_column": "text", "tokenizer": None, "tokenizer_vocab_size": 4096,
             "block_size": 128, "packing": True, "held_out_fraction": 0.05, "streaming": False,
             "streaming_eval_documents": 1000}


@dataclass(kw_only=True)
class ReverseConfig(TaskConfig):
    name: str = "reverse_digits"
    length: int = 3  # digits per example


class ReverseTask:
    """Write a short list of digits backwards."""

    is_seq2seq = True

    def __init__(self, config: ReverseConfig) -> None:
        self.config, self.name = config, config.name
        self.tokenizer = WordTokenizer([str(d) for d in range(10)])
        self.max_new_tokens = config.length + 1
        self.max_seq_len = 2 * config.length + 2

    def dataset(self, split: str) -> datasets.Dataset:
        rng = random.Random(f"{self.config.seed}/{split}")
        rows = [[str(rng.randrange(10)) for _ in range(self.config.length)] for _ in range(64)]
        prompts, targets = [" ".join(r) for r in rows], [" ".join(reversed(r)) for r in rows]
        return datasets.Dataset.from_dict({
            "prompt": prompts, "target": targets,
            "prompt_ids": [self.tokenizer.encode(p) for p in prompts],
            "target_ids": [self.tokenizer.encode(t) for t in targets]})

    def score(self, pred_text, example):
        return {"exact_match": float(pred_text.split() == example["target"].split())}


@pytest.fixture
def reverse_task():
    saved = dict(tasks._tasks)
    register_task("reverse_digits", config_class=ReverseConfig, builder=ReverseTask,
                  description="write a list of digits backwards")
    yield
    tasks._tasks.clear()
    tasks._tasks.update(saved)


def test_a_registered_task_trains_and_evaluates_without_yaml(reverse_task, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    assert "reverse_digits  write a list of digits backwards" in capsys.readouterr().out
    run = tmp_path / "run"
    assert train.main(["--arch", "arlm_tiny", "--task", "reverse_digits", "--output-dir", str(run), "task.length=4",
                       "trainer.max_steps=2", "trainer.eval_every_steps=0", "trainer.checkpoint_every_steps=2",
                       "trainer.progress_bar=false", "trainer.tensorboard=false", "data.batch_size=8",
                       "data.eval_batch_size=16", "task.eval_size=8"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "reverse_digits" and config["train_config"]["task"]["length"] == 4
    assert config["model_config"]["vocab_size"] == 17  # 7 special tokens + 10 digits
    assert config["sampler_config"]["max_new_tokens"] == 5
    out = tmp_path / "eval.json"
    assert evaluate.main(["--model", str(run), "--split", "test", "--output", str(out), "--limit", "8"]) == 0
    result = json.loads(out.read_text())
    assert result["task"] == "reverse_digits" and result["num_examples"] == 8 and "exact_match" in result


def test_a_run_dir_with_the_old_flat_task_section_evaluates(tmp_path):
    tokenizer = star_tokenizer("star_easy")
    torch.manual_seed(0)
    model = xlm.create_model("arlm_tiny", vocab_size=tokenizer.vocab_size)
    family = xlm.get_family("arlm")
    run = tmp_path / "old_run"
    write_run_dir(run, model=model, family="arlm", arch="arlm_tiny", model_config=model.config,
                  sampler_config=family.sampler_config_class(max_new_tokens=9), tokenizer=tokenizer,
                  task="star_easy", train_config={"task": FLAT_STAR}, metrics={})
    out = tmp_path / "eval.json"
    assert evaluate.main(["--model", str(run), "--output", str(out), "--limit", "4", "--batch-size", "4"]) == 0
    assert json.loads(out.read_text())["num_examples"] == 4


def test_saved_task_configs_of_either_layout():
    assert saved_task_config(FLAT_STAR, "old/config.json") == TaskConfig(name="star_easy", seed=7, train_size=256,
                                                                         eval_size=16)
    new = asdict(TaskConfig(name="sort", seed=5))
    assert saved_task_config(new, "new/config.json") == TaskConfig(name="sort", seed=5)
    flat_text = {**FLAT_STAR, "name": "text", "data_files": "corpus.txt", "block_size": 64, "streaming": True}
    text = saved_task_config(flat_text, "old/config.json")
    assert type(text) is TextTaskConfig and (text.data_files, text.block_size, text.streaming) == ("corpus.txt", 64,
                                                                                                    True)
    with pytest.raises(ValueError, match=r"old/config.json sets \['block_size'\].*'star_easy'"):
        saved_task_config({**FLAT_STAR, "block_size": 64}, "old/config.json")
    with pytest.raises(ValueError, match="colour"):
        saved_task_config({"name": "sort", "colour": "red"}, "x")
