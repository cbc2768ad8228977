"""ilm_tiny through the train and evaluate recipes: on star_easy (the loss falls, predictions are
scored, a reloaded model generates after its prompt) and a few steps on the text task (LM rows)."""

import json
import math

import pytest
import torch

import xlm
from xlm.data.corpora import pydoc_corpus
from xlm.recipes import evaluate, train

COMMON = ["--experiment", "debug", "trainer.progress_bar=false", "optim.warmup_steps=5"]


@pytest.fixture(autouse=True)
def one_thread():
    """These tiny models gain nothing from intra-op threads, and when other processes share the
    cores, two spinning OpenMP threads make a run several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train_losses(run):
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["split"] == "train"]


def test_star_easy_train_then_evaluate(tmp_path):
    run = tmp_path / "run"
    assert train.main(["--arch", "ilm_tiny", "--task", "star_easy", "--output-dir", str(run), *COMMON,
                       "trainer.max_steps=100", "task.train_size=64", "data.batch_size=64", "optim.lr=1e-2",
                       "trainer.checkpoint_every_steps=100"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["family"] == "ilm" and config["sampler_config"]["max_new_tokens"] == 9  # 8 target + 1
    losses = _train_losses(run)
    assert len(losses) == 100
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.9 * first, (first, last)

    out = tmp_path / "eval.json"
    assert evaluate.main(["--model", str(run), "--split", "test", "--limit", "20", "--output", str(out),
                          "sampler.insertions_per_step=2"]) == 0
    result = json.loads(out.read_text())
    assert result["num_examples"] == 20
    assert 0.0 <= result["exact_match"] <= 1.0 and result["loss"] > 0

    # the reloaded model inserts after its prompt, at most max_new_tokens tokens
    model, tokenizer = xlm.load_model(run), xlm.load_tokenizer(run)
    family = xlm.get_family("ilm")
    unit = family.unit_factory(model, tokenizer, family.sampler_config_class(max_new_tokens=9))
    prompt = tokenizer.encode("1 2 2 3 1 3")
    pred = unit.predict(unit.collate_predict([{"prompt_ids": prompt}]))
    (sequence,) = pred["sequences"]
    assert sequence[: len(prompt) + 2] == [tokenizer.cls_token_id, *prompt, tokenizer.bos_token_id]
    assert len(pred["ids"][0]) <= pred["num_inserted"][0] <= 9


def test_text_task_trains_on_lm_rows(tmp_path):
    corpus = pydoc_corpus(tmp_path / "pydoc.txt")
    run = tmp_path / "text_run"
    assert train.main(["--arch", "ilm_tiny", "--task", "text", "--output-dir", str(run), *COMMON,
                       f"task.data_files={corpus}", "task.tokenizer_vocab_size=256", "task.block_size=32",
                       "task.eval_size=16", "trainer.max_steps=20", "data.batch_size=16", "optim.lr=1e-2",
                       "trainer.checkpoint_every_steps=20"]) == 0
    losses = _train_losses(run)  # starts near log(31 gaps * 256 tokens) + log 2 ~ 9.7
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.5, (first, last)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val_loss"] > 0

    out = tmp_path / "eval.json"
    assert evaluate.main(["--model", str(run), "--split", "validation", "--loss-samples", "0"]) == 2
    assert evaluate.main(["--model", str(run), "--split", "validation", "--output", str(out),
                          "--loss-samples", "3"]) == 0
    result = json.loads(out.read_text())
    assert result["loss_samples"] == 3
    assert math.isclose(result["perplexity"], math.exp(result["nll_bound"]), rel_tol=1e-6)
    # per token: a uniform insertion model would score log 256 + its stop cost; the order entropy
    # log L! is taken off (without it the bound would exceed log 256 + log(31!) / 31 ~ 8.2)
    assert 0 < result["nll_bound"] < math.log(256) + 1.0 and "bound" in result["loss_meaning"]

    # unconditional generation from [CLS] [BOS]
    model, tokenizer = xlm.load_model(run), xlm.load_tokenizer(run)
    family = xlm.get_family("ilm")
    unit = family.unit_factory(model, tokenizer, family.sampler_config_class(max_new_tokens=8, strategy="sample"))
    pred = unit.predict(unit.collate_predict([{}, {}]))
    assert all(seq[:2] == [tokenizer.cls_token_id, tokenizer.bos_token_id] for seq in pred["sequences"])
    assert all(n <= 8 for n in pred["num_inserted"])
