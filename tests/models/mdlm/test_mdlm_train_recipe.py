"""mdlm_tiny through the train and evaluate recipes: on star_easy (the loss falls, predictions are
scored) and on the text task (the NELBO falls, evaluation reports it with its perplexity bound)."""

import json
import math

import torch

import xlm
from xlm.data.corpora import pydoc_corpus
from xlm.recipes import evaluate, train

COMMON = ["--experiment", "debug", "trainer.progress_bar=false", "optim.warmup_steps=5"]


def _train_losses(run):
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["split"] == "train"]


def _falls(losses, factor):
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    return last < factor * first, (first, last)


def test_star_easy_train_then_evaluate(tmp_path):
    run = tmp_path / "run"
    assert train.main(["--arch", "mdlm_tiny", "--task", "star_easy", "--output-dir", str(run), *COMMON,
                       "trainer.max_steps=100", "task.train_size=64", "data.batch_size=64", "optim.lr=1e-2",
                       "trainer.checkpoint_every_steps=100"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["family"] == "mdlm" and config["sampler_config"]["max_new_tokens"] == 9
    ok, detail = _falls(_train_losses(run), 0.8)
    assert ok, detail

    out = tmp_path / "eval.json"
    assert evaluate.main(["--model", str(run), "--split", "test", "--limit", "20", "--output", str(out),
                          "sampler.num_steps=8"]) == 0
    result = json.loads(out.read_text())
    assert result["num_examples"] == 20 and 0.0 <= result["exact_match"] <= 1.0 and result["loss"] > 0

    model, tokenizer = xlm.load_model(run), xlm.load_tokenizer(run)
    family = xlm.get_family("mdlm")
    unit = family.unit_factory(model, tokenizer, family.sampler_config_class(max_new_tokens=9, num_steps=4))
    batch = unit.collate_predict([{"prompt_ids": tokenizer.encode("1 2 2 3 1 3")}])
    pred = unit.predict(batch)
    assert pred["sequences"].shape == (1, 7 + 9)
    assert not (pred["sequences"] == tokenizer.mask_token_id).any()
    assert torch.equal(pred["sequences"][0, :7], batch["input_ids"][0, :7])


def test_text_task_train_then_evaluate(tmp_path):
    corpus = pydoc_corpus(tmp_path / "pydoc.txt")
    run = tmp_path / "text_run"
    assert train.main(["--arch", "mdlm_tiny", "--task", "text", "--output-dir", str(run), *COMMON,
                       f"task.data_files={corpus}", "task.tokenizer_vocab_size=256", "task.block_size=64",
                       "trainer.max_steps=150", "data.batch_size=16", "optim.lr=5e-3",
                       "trainer.checkpoint_every_steps=150"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model_config"]["vocab_size"] == 256 and config["tokenizer"]["kind"] == "sentencepiece"
    losses = _train_losses(run)  # starts at ~log(256) = 5.5 (a fresh DiT predicts uniformly)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 0.3, (first, last)

    out = tmp_path / "eval.json"
    assert evaluate.main(["--model", str(run), "--split", "validation", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["task"] == "text" and result["num_examples"] > 10
    assert math.isclose(result["perplexity"], math.exp(result["loss"]), rel_tol=1e-6)
    assert result["loss"] < math.log(256) + 1.0  # a (loose) sanity bound: near or below uniform after training
