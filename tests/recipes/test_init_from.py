"""`xlm train ... init_from=SOURCE` starts a run from another model's weights (fine-tuning): a shipped card on
another star task, an HF GPT-2 dir (saved by transformers) on a corpus read with its own tokenizer; a resume
continues from the run's checkpoint; each mistake is one line."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import xlm
from xlm.data.corpora import pydoc_paragraphs
from xlm.recipes import convert, train
from xlm.recipes.init_from import weights_digest
from xlm.recipes.model_source import load_for_command
from xlm.recipes.run_history import read_segments

transformers = pytest.importorskip("transformers")
from tests.hf_tokenizers import bert_tokenizer, gpt2_tokenizer  # noqa: E402  (needs transformers)

ROOT = Path(__file__).resolve().parents[2]
# optim.lr=0: the weights a run ends with are the ones it started from
STILL = ["optim.lr=0", "trainer.eval_every_steps=0", "task.eval_size=4", "trainer.num_threads=1"]


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_run_starts_from_a_cards_weights_on_another_task_and_resumes_from_its_own_checkpoint(tmp_path, capsys):
    run = tmp_path / "ft"
    base = ["--arch", "mdlm_star", "--task", "star_medium", "--output-dir", str(run), "init_from=mdlm_star_easy",
            *STILL, "model.loss_weighting=none"]
    assert train.main([*base, "trainer.max_steps=2", "trainer.checkpoint_every_steps=1"]) == 0
    assert "starting from the weights of card mdlm_star_easy" in capsys.readouterr().err
    card = load_for_command("mdlm_star_easy")
    tuned = xlm.load_model(run)
    # the card's network (mdlm_star_long's init=normal, not mdlm_star's preset) with the command line's setting
    assert tuned.config == dataclasses.replace(card.model.config, loss_weighting="none")
    assert all(torch.equal(tuned.state_dict()[k], v) for k, v in _state(card.model).items())
    assert json.loads((run / "config.json").read_text())["tokenizer"] == card.tokenizer.spec()

    assert train.main([*base, "trainer.max_steps=3"]) == 0  # a longer budget: resumed, not started again
    err = capsys.readouterr().err
    assert "parameters, resumed from" in err and "(step 2)" in err and "weights of card" not in err
    started, resumed = read_segments(run)  # a card's name can come to mean other weights: the digest says which
    assert started["initial_weights"] == {"init_from": "mdlm_star_easy", "loaded": "card mdlm_star_easy",
                                          "weights_sha256": weights_digest(card.model.state_dict())}
    assert resumed["initial_weights"] is None
    assert weights_digest(load_for_command("mlm_star_easy").model.state_dict()) != started["initial_weights"][
        "weights_sha256"]
    same_weights = ROOT / "assets" / "cards" / "checkpoints" / "mdlm_star_easy"  # but another source, as a path
    assert train.main([*base, f"init_from={same_weights}", "trainer.max_steps=4"]) == 2
    assert f"init_from: 'mdlm_star_easy' -> '{same_weights}'" in capsys.readouterr().err  # the record stays true


@pytest.mark.parametrize("args, says", [
    (["--arch", "arlm_star", "init_from=mdlm_star_easy"],
     "init_from='mdlm_star_easy' is a model of the mdlm family, and --arch arlm_star trains arlm"),
    (["--arch", "mdlm_star", "--task", "star_hard", "init_from=mdlm_star_easy"],
     "init_from='mdlm_star_easy' reads another vocabulary than task 'star_hard''s tokenizer"),
    (["--arch", "mdlm_star", "init_from=mdlm_star_esay"], "mdlm_star_easy"),
    (["--arch", "mdlm_star", "init_from=mdlm_star_easy", "model.model_dim=64"],
     "init_from='mdlm_star_easy': its weights do not fit the model this config builds (leave out the command "
     "line's model settings that change its shapes)"),
])
def test_each_mistake_is_one_line_and_writes_nothing(args, says, tmp_path, capsys):
    run = tmp_path / "run"
    assert train.main([*args, "--output-dir", str(run), *STILL, "trainer.max_steps=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and says in err[-1], err
    assert not (run / "checkpoints").exists() and not (run / "model.safetensors").exists()


def test_an_hf_gpt2_is_fine_tuned_on_a_corpus_read_with_its_own_tokenizer(tmp_path, capsys):
    tokenizer = gpt2_tokenizer()
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(  # an embedding padded past the tokenizer, as many are
        vocab_size=len(tokenizer) + 24, n_positions=64, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)).eval()
    hf_dir = tmp_path / "gpt2"
    gpt2.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(pydoc_paragraphs()[:60]), encoding="utf-8")

    run = tmp_path / "ft"
    text = ["--arch", "arlm_star", "--task", "text", f"task.data_files={corpus}", f"init_from={hf_dir}", *STILL,
            "trainer.max_steps=1", "--output-dir"]
    assert train.main([*text, str(tmp_path / "long"), "task.block_size=65"]) == 2
    assert capsys.readouterr().err.strip().endswith(f"error: init_from={str(hf_dir)!r} holds 64 positions, fewer than "
                                                    f"task 'text''s longest row (65 tokens); choose shorter rows")
    assert train.main([*text, str(run), "task.block_size=32"]) == 0
    tuned, ids = xlm.load_model(run), torch.tensor([tokenizer("The with statement is used")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(tuned(ids), gpt2(ids).logits, atol=1e-5)
    assert xlm.load_tokenizer(run).spec() == xlm.load_tokenizer(hf_dir).spec()  # no tokenizer trained on the corpus


def test_an_hf_bert_fine_tuned_here_goes_back_to_transformers_with_its_own_tokenizer(tmp_path, capsys):
    tokenizer = bert_tokenizer()
    torch.manual_seed(0)
    bert = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)).eval()
    hf_dir = tmp_path / "bert"
    bert.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(pydoc_paragraphs()[:60]), encoding="utf-8")

    run = tmp_path / "ft"  # a real step this time: the weights move, and travel back
    assert train.main(["--arch", "mlm_star", "--task", "text", f"task.data_files={corpus}", "task.block_size=32",
                       "--output-dir", str(run), f"init_from={hf_dir}", "trainer.max_steps=1", "task.eval_size=4",
                       "trainer.eval_every_steps=0", "trainer.num_threads=1"]) == 0
    assert convert.main(["--from", str(run), "--to", "hf", "--out", str(tmp_path / "back")]) == 0
    back = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "back").eval()
    ids = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")("the with statement is used",
                                                                         return_tensors="pt")["input_ids"]
    assert ids.tolist() == tokenizer("the with statement is used", return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        tuned, before = back(ids).logits, bert(ids).logits
        assert torch.allclose(xlm.load_model(run)(ids), tuned, atol=1e-5) and not torch.allclose(tuned, before)
