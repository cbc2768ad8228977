"""HF causal LMs (random weights, saved by transformers) with a GPT-2-style tokenizer beside them
generate through `xlm.load_generator(dir)` as they do in transformers: greedy ids for equal-length
and left-padded batches, decoded text, and the sampling distribution after top-k / top-p."""

import json
import math
import re

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import xlm
from xlm.assets.generator import TokenizerMismatchError
from xlm.data.corpora import pydoc_paragraphs
from xlm.data.tokenizers import MissingSpecialTokenError
from xlm.nn.sampling import filter_logits

transformers = pytest.importorskip("transformers")

EOT = "<|endoftext|>"
NEW_TOKENS = 128
PROMPTS = ["The with statement", "A class definition defines a class object, and", "Assignment statements"]


@pytest.fixture(scope="module")
def hf_tokenizer():
    """GPT-2's kind: byte-level BPE whose one special token is bos, eos and unk at once."""
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(pydoc_paragraphs(), trainers.BpeTrainer(
        vocab_size=512, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=EOT, eos_token=EOT, unk_token=EOT)


def _hf_model(kind: str, vocab_size: int, eos: int):
    torch.manual_seed(0)
    # a wider init than HF's default spreads the logits, so no greedy step is a near tie
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=256, n_embd=64, n_layer=2, n_head=4,
                                         initializer_range=0.2, bos_token_id=eos, eos_token_id=eos)
        return transformers.GPT2LMHeadModel(config).eval()
    config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      initializer_range=0.2, bos_token_id=eos, eos_token_id=eos)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def hf_dir(request, hf_tokenizer, tmp_path_factory):
    """(the transformers model, its dir with the tokenizer saved beside it)."""
    model = _hf_model(request.param, len(hf_tokenizer), hf_tokenizer.eos_token_id)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    hf_tokenizer.save_pretrained(path)
    return model, path


def _left_padding_tokenizer(path):
    """As a transformers user batches GPT-2 prompts: left padding, eos as the pad token."""
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(path, padding_side="left")
    tok.pad_token = tok.eos_token
    return tok


def _until_eos(row, eos):
    row = list(row)
    return row[: row.index(eos)] if eos in row else row


def _hf_new_ids(model, input_ids, attention_mask, eos, **generate_kwargs):
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS,
                             pad_token_id=eos, **generate_kwargs)
    return [_until_eos(row, eos) for row in out[:, input_ids.size(1):].tolist()]


def _xlm_new_ids(generator, rows, eos, **kwargs):
    return [_until_eos(row, eos) for row in generator.generate_ids(rows, NEW_TOKENS, **kwargs).tolist()]


def test_greedy_ids_equal_transformers_for_equal_length_prompts(hf_dir):
    model, path = hf_dir
    tok = _left_padding_tokenizer(path)
    rows = [tok(p)["input_ids"][:8] for p in pydoc_paragraphs()[:4]]
    ids = torch.tensor(rows)
    theirs = _hf_new_ids(model, ids, torch.ones_like(ids), tok.eos_token_id, do_sample=False)
    ours = _xlm_new_ids(xlm.load_generator(path), rows, tok.eos_token_id)
    assert ours == theirs
    assert max(map(len, theirs)) == NEW_TOKENS  # the comparison covers the whole budget


def test_greedy_ids_equal_transformers_for_a_left_padded_batch(hf_dir):
    model, path = hf_dir
    tok = _left_padding_tokenizer(path)
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    assert not batch["attention_mask"].all()  # the prompts' lengths differ
    theirs = _hf_new_ids(model, batch["input_ids"], batch["attention_mask"], tok.eos_token_id, do_sample=False)
    ours = _xlm_new_ids(xlm.load_generator(path), [tok(p)["input_ids"] for p in PROMPTS], tok.eos_token_id)
    assert ours == theirs


def test_a_dir_converted_to_xlm_generates_as_transformers(hf_dir, tmp_path):
    """`xlm convert` keeps the model's own tokenizer and the continuation prompt format in the run dir it writes."""
    from xlm.recipes import convert

    model, path = hf_dir
    assert convert.main(["--from", str(path), "--to", "xlm", "--out", str(tmp_path / "xlm")]) == 0
    generator = xlm.load_generator(tmp_path / "xlm")
    assert generator.sampler_config.prompt_format == "continuation"
    tok = _left_padding_tokenizer(path)
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    theirs = _hf_new_ids(model, batch["input_ids"], batch["attention_mask"], tok.eos_token_id, do_sample=False)
    assert _xlm_new_ids(generator, [tok(p)["input_ids"] for p in PROMPTS], tok.eos_token_id) == theirs


def test_generated_text_equals_transformers_decoded_continuation(hf_dir):
    model, path = hf_dir
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(path)
    prompt = tok(PROMPTS[1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(prompt, do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=tok.eos_token_id)
    theirs = tok.decode(out[0, prompt.size(1):], skip_special_tokens=True)
    assert theirs and xlm.load_generator(path).generate([PROMPTS[1]], max_new_tokens=NEW_TOKENS) == [theirs]


FILTERS = [(1.0, 20, None), (1.0, None, 0.9), (0.7, 50, 0.8), (1.5, 8, 0.95)]  # temperature, top_k, top_p


def _warped(logits, input_ids, temperature, top_k, top_p):
    """What transformers' sampling draws from: its warpers in generate's order, then softmax."""
    from transformers.generation import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    scores = TemperatureLogitsWarper(temperature)(input_ids, logits.clone())
    if top_k is not None:
        scores = TopKLogitsWarper(top_k)(input_ids, scores)
    if top_p is not None:
        scores = TopPLogitsWarper(top_p)(input_ids, scores)
    return scores.softmax(-1)


@pytest.mark.parametrize("temperature, top_k, top_p", FILTERS)
def test_top_k_top_p_filtering_equals_transformers_warpers(hf_dir, temperature, top_k, top_p):
    model, path = hf_dir
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(path)
    input_ids = torch.tensor([tok(PROMPTS[0])["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids).logits[:, -1].float()
    ours = filter_logits(logits / temperature, top_k=top_k, top_p=top_p).softmax(-1)
    theirs = _warped(logits, input_ids, temperature, top_k, top_p)
    assert torch.equal(ours > 0, theirs > 0) and 1 < int((ours > 0).sum()) < logits.size(-1)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def _chi_square_critical(df: int, z: float = 3.719) -> float:
    """The chi-square quantile at the normal quantile z (3.719: p = 1e-4), by Wilson and Hilferty."""
    a = 2 / (9 * df)
    return df * (1 - a + z * math.sqrt(a)) ** 3


def test_seeded_samples_follow_the_filtered_distribution(hf_dir):
    model, path = hf_dir
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(path)
    prompt = tok(PROMPTS[2])["input_ids"]
    temperature, top_k, top_p = 0.7, 12, 0.9
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[:, -1].float()
    expected = _warped(logits, torch.tensor([prompt]), temperature, top_k, top_p)[0]
    generator = xlm.load_generator(path, strategy="sample", temperature=temperature, top_k=top_k, top_p=top_p)
    n = 4000
    first = generator.generate_ids([prompt] * n, max_new_tokens=1, seed=0)[:, 0]  # [PAD] is eos: a row that ended
    assert torch.equal(first, generator.generate_ids([prompt] * n, max_new_tokens=1, seed=0)[:, 0])  # seeded
    counts = torch.bincount(first, minlength=expected.numel()).double()
    support = expected > 0
    assert counts[~support].sum() == 0  # nothing outside what the filters keep
    want = expected[support].double() * n
    assert want.min() >= 5  # every cell large enough for the chi-square approximation
    statistic = float(((counts[support] - want) ** 2 / want).sum())
    assert statistic < _chi_square_critical(int(support.sum()) - 1)


def test_seeded_sampling_equals_transformers_under_the_same_seed(hf_dir):
    """The same filtered probabilities, drawn from by torch.multinomial with a generator seeded as
    transformers' global one: the same tokens, row by row, for the whole budget."""
    model, path = hf_dir
    tok = _left_padding_tokenizer(path)
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    sampling = {"temperature": 0.8, "top_k": 20, "top_p": 0.9}
    torch.manual_seed(1)
    theirs = _hf_new_ids(model, batch["input_ids"], batch["attention_mask"], tok.eos_token_id, do_sample=True,
                         **sampling)
    generator = xlm.load_generator(path, strategy="sample", **sampling)
    assert _xlm_new_ids(generator, [tok(p)["input_ids"] for p in PROMPTS], tok.eos_token_id, seed=1) == theirs


def test_the_model_tokenizer_is_used_as_it_is(hf_dir, hf_tokenizer):
    _, path = hf_dir
    generator = xlm.load_generator(path)
    tokenizer = generator.tokenizer
    assert tokenizer.vocab_size == len(hf_tokenizer)  # nothing added past the embedding
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == tokenizer.bos_token_id == hf_tokenizer.eos_token_id
    with pytest.raises(MissingSpecialTokenError, match=re.escape(f"no mask token (its special tokens: eos='{EOT}'")):
        _ = tokenizer.mask_token_id
    assert generator.sampler_config.prompt_format == "continuation"
    assert xlm.load_generator(path, prompt_format="seq2seq").sampler_config.prompt_format == "seq2seq"


def test_a_tokenizer_larger_than_the_embedding_is_refused(hf_tokenizer, tmp_path):
    small = len(hf_tokenizer) - 10
    _hf_model("gpt2", small, hf_tokenizer.eos_token_id).save_pretrained(tmp_path)
    hf_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(TokenizerMismatchError, match=f"tokenizer has {len(hf_tokenizer)} tokens but the model's "
                                                     f"embedding has {small} rows"):
        xlm.load_generator(tmp_path)


@pytest.fixture(scope="module")
def no_special_tokens_dir(tmp_path_factory):
    """A GPT-2 with 32 learned positions and a word-level tokenizer that has no special token at all
    (no eos, no pad), both saved by transformers."""
    words = "the a cat dog sat ran on under mat rug".split()
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="the"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=raw)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=len(words), n_positions=32, n_embd=32, n_layer=2, n_head=2,
                                     initializer_range=0.2, bos_token_id=None, eos_token_id=None)
    model = transformers.GPT2LMHeadModel(config).eval()
    path = tmp_path_factory.mktemp("no_special_tokens")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer, path


def test_a_tokenizer_without_eos_generates_max_new_tokens_as_transformers(no_special_tokens_dir):
    model, tokenizer, path = no_special_tokens_dir
    generator = xlm.load_generator(path, max_new_tokens=6)
    with pytest.raises(MissingSpecialTokenError, match="no eos token"):
        _ = generator.tokenizer.eos_token_id
    prompts = ["the cat sat on", "a dog"]
    for prompt, text in zip(prompts, generator.generate(prompts)):  # a left-padded batch of two
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            expected = model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.size(1):]
        assert len(expected) == 6
        assert text == tokenizer.decode(expected)


def test_generation_stops_at_the_learned_positions_with_one_warning_line(no_special_tokens_dir, capsys):
    _, _, path = no_special_tokens_dir
    with pytest.warns(xlm.errors.XlmWarning, match="generating 28 new tokens, not 64: this model's learned "
                                                   "positions end at max_seq_len=32 and the prompt takes 4"):
        ids = xlm.load_generator(path, max_new_tokens=64).generate_ids([[0, 2, 4, 6]])
    assert ids.shape == (1, 28)
    assert xlm.cli.main(["generate", "--model", str(path), "--prompt", "the cat sat on"]) == 0
    err = capsys.readouterr().err
    assert "warning: generating 28 new tokens, not 64" in err and "UserWarning" not in err


def test_xlm_eval_scores_an_hf_model_on_a_corpus_with_its_own_tokenizer_as_transformers_does(hf_dir, tmp_path,
                                                                                              monkeypatch, capsys):
    """`xlm eval --model HF_DIR --task text task.data_files=F` said the model had no task to be scored on."""
    from xlm.data.tasks import build_task, task_config
    from xlm.recipes import evaluate

    model, path = hf_dir
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("\n".join(pydoc_paragraphs()[:120]), encoding="utf-8")
    assert evaluate.main(["--model", str(path), "--task", "text", "task.data_files=corpus.txt", "task.block_size=48",
                          "--split", "validation", "--output", "eval.json"]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    rows = build_task(task_config("text", data_files="corpus.txt", block_size=48),
                      tokenizer=xlm.load_tokenizer(path)).dataset("validation")["input_ids"]
    assert result["num_examples"] == len(rows) > 5 and {len(r) for r in rows} == {48}
    with torch.no_grad():  # transformers shifts the labels itself: 47 predicted tokens a row, all rows alike
        losses = [model(torch.tensor([r]), labels=torch.tensor([r])).loss.item() for r in rows]
    assert math.isclose(result["loss"], sum(losses) / len(losses), rel_tol=1e-5)
    assert math.isclose(result["perplexity"], math.exp(result["loss"]), rel_tol=1e-9)
    assert result["task_overrides"] == ["task.data_files=corpus.txt", "task.block_size=48"]
    capsys.readouterr()
    for extra, says in (([], "is a checkpoint of another layout, trained on no xlm task; name text to score it on "
                             "with --task text task.data_files=FILE"),
                        (["--task", "star_easy"], "task 'star_easy' has its own vocabulary"),
                        (["--task", "text", "task.data_files=corpus.txt", "task.tokenizer=tok.model"],
                         "task.tokenizer='tok.model' is set, but this task reads the text with the model's own")):
        assert evaluate.main(["--model", str(path), *extra]) == 2
        assert says in capsys.readouterr().err
