"""Train arlm_tiny a few steps on star_easy, evaluate, reload from the run dir and generate."""

import json

import torch

import xlm
from xlm.data.tasks.star import load_star
from xlm.models.arlm.predictor import ArlmPredictor
from xlm.recipes import evaluate, train
from xlm.run_dir import load_run_sampler_config


def test_train_evaluate_reload_generate(tmp_path, capsys):
    run = tmp_path / "run"
    assert train.main(["--arch", "arlm_tiny", "--task", "star_easy", "--experiment", "debug",
                       "--output-dir", str(run), "trainer.progress_bar=false", "trainer.max_steps=6"]) == 0
    for name in ("model.safetensors", "config.json", "metrics.json", "metrics.jsonl"):
        assert (run / name).exists(), name
    config = json.loads((run / "config.json").read_text())
    assert config["family"] == "arlm" and config["arch"] == "arlm_tiny" and config["task"] == "star_easy"
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["step"] == 6 and 0.0 <= summary["val_exact_match"] <= 1.0

    out_json = tmp_path / "eval.json"
    assert evaluate.main(["--model", str(run), "--task", "star_easy", "--split", "test", "--limit", "40",
                          "--output", str(out_json)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out_json.read_text())
    assert result["num_examples"] == 40
    for key in ("exact_match", "token_accuracy", "path_valid", "loss"):
        assert key in result and key in printed

    model = xlm.load_model(run)
    tokenizer = xlm.load_tokenizer(run)
    assert not model.training
    example = load_star("star_easy", "test")[0]
    prompt = tokenizer.encode(example["prompt"]) + [tokenizer.bos_token_id]
    predictor = ArlmPredictor(model, tokenizer, load_run_sampler_config(run, max_new_tokens=10))
    sequences = predictor.generate(torch.tensor([prompt]))
    assert sequences.shape[1] > len(prompt)
    assert torch.equal(sequences[0, : len(prompt)], torch.tensor(prompt))

    # the reloaded model scores the validation split exactly as the run reported
    reloaded = evaluate.main(["--model", str(run), "--split", "validation", "--limit", "16",
                              "--output", str(tmp_path / "val.json")])
    assert reloaded == 0
    val = json.loads((tmp_path / "val.json").read_text())
    assert abs(val["loss"] - summary["val_loss"]) < 1e-5
