"""mlm_tiny through the train and evaluate recipes on star_easy: the loss falls, evaluation scores."""

import json

import torch

import xlm
from xlm.recipes import evaluate, train


def test_train_then_evaluate(tmp_path):
    run = tmp_path / "run"
    assert train.main(["--arch", "mlm_tiny", "--task", "star_easy", "--experiment", "debug",
                       "--output-dir", str(run), "trainer.progress_bar=false", "trainer.max_steps=100",
                       "task.train_size=64", "data.batch_size=64", "optim.lr=1e-2", "optim.warmup_steps=5",
                       "trainer.checkpoint_every_steps=100"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["family"] == "mlm" and config["sampler_config"]["max_new_tokens"] == 9  # 8 target + [EOS]
    losses = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if r["split"] == "train"]
    assert len(losses) == 100
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.9 * first, (first, last)

    out = tmp_path / "eval.json"
    assert evaluate.main(["--model", str(run), "--split", "test", "--limit", "20", "--output", str(out),
                          "sampler.num_steps=3"]) == 0
    result = json.loads(out.read_text())
    assert result["num_examples"] == 20
    assert 0.0 <= result["exact_match"] <= 1.0 and result["loss"] > 0

    # the reloaded model predicts through its unit: a block of 9 filled, no [MASK] left
    model, tokenizer = xlm.load_model(run), xlm.load_tokenizer(run)
    family = xlm.get_family("mlm")
    unit = family.unit_factory(model, tokenizer, family.sampler_config_class(max_new_tokens=9))
    batch = unit.collate_predict([{"prompt_ids": tokenizer.encode("1 2 2 3 1 3")}])
    pred = unit.predict(batch)
    assert pred["sequences"].shape == (1, 7 + 9)
    assert not (pred["sequences"] == tokenizer.mask_token_id).any()
    assert torch.equal(pred["sequences"][0, :7], batch["input_ids"][0, :7])
