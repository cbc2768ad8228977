"""An HF BERT dir (random weights, saved by transformers) with a WordPiece tokenizer beside it: xlm's
MLM fills a masked position as transformers' fill-mask pipeline does."""

import pytest
import torch

import xlm
from xlm.assets.generator import NotSupportedByFamilyError

transformers = pytest.importorskip("transformers")
from tests.hf_tokenizers import bert_tokenizer  # noqa: E402  (needs transformers)

SENTENCES = ["the with statement is used to [MASK] the execution of a block",
             "a class definition [MASK] a class object",
             "assignment statements are used to bind names to [MASK]"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """(the transformers model, its dir with its WordPiece tokenizer saved beside it)."""
    tokenizer = bert_tokenizer()
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=128, max_position_embeddings=64,
                                     initializer_range=0.2, pad_token_id=tokenizer.pad_token_id)
    model = transformers.BertForMaskedLM(config).eval()
    path = tmp_path_factory.mktemp("bert")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, path


def test_one_masked_position_is_filled_with_the_pipelines_top_1(bert_dir):
    model, path = bert_dir
    fill_mask = transformers.pipeline("fill-mask", model=model, tokenizer=str(path))
    tok = fill_mask.tokenizer
    generator = xlm.load_generator(path)
    assert generator.tokenizer.vocab_size == len(tok)  # the model's own tokenizer, nothing added
    ours = generator.fill_masks(SENTENCES)
    for sentence, filled in zip(SENTENCES, ours):
        # xlm never fills a mask with [MASK] or [PAD]; the pipeline ranks every token
        best = next(c for c in fill_mask(sentence, top_k=3) if c["token"] not in (tok.mask_token_id, tok.pad_token_id))
        assert filled == best["sequence"]
    assert ours[0] != SENTENCES[0].replace("[MASK]", "")  # something was filled in
    assert generator.fill_masks(SENTENCES[0]) == ours[:1] and generator.fill_masks([]) == []  # a str is one text


def test_families_that_do_not_fill_masks_say_so(tmp_path):
    from xlm.data.tokenizers import WordTokenizer
    from xlm.run_dir import write_run_dir

    tok = WordTokenizer(["a", "b"])
    model = xlm.create_model("arlm_tiny", vocab_size=tok.vocab_size)
    write_run_dir(tmp_path, model=model, family="arlm", arch="arlm_tiny", model_config=model.config,
                  sampler_config=xlm.get_family("arlm").sampler_config_class(), tokenizer=tok, task=None,
                  train_config=None, metrics={})
    with pytest.raises(NotSupportedByFamilyError, match="arlm family's predictor does not fill masks"):
        xlm.load_generator(tmp_path).fill_masks(["a [MASK] b"])


def test_xlm_generate_fills_a_prompts_masks_as_the_pipeline_and_explains_a_prompt_without_one(bert_dir, capsys):
    """`xlm generate --model BERT_DIR --prompt "... [MASK] ..."` said "this model's tokenizer has no bos token ...:
    use a model whose tokenizer has one"; it now prints the filled text, traced like any sampler."""
    model, path = bert_dir
    fill_mask = transformers.pipeline("fill-mask", model=model, tokenizer=str(path))
    tok = fill_mask.tokenizer
    best = next(c for c in fill_mask(SENTENCES[1], top_k=3) if c["token"] not in (tok.mask_token_id, tok.pad_token_id))
    assert xlm.cli.main(["generate", "--model", str(path), "--prompt", SENTENCES[1], "--trace"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [f"[1.1] {SENTENCES[1]}", f"    -> {best['sequence']}"]
    assert out[3].startswith("    step 0 of 1: [CLS] a class") and "[MASK]" in out[3] and "{" in out[4]
    assert xlm.cli.main(["generate", "--model", str(path), "--prompt", "a class definition"]) == 2
    assert capsys.readouterr().err == ("error: prompt 1 has no [MASK] to fill, and this model continues no prompt (its "
                                       "tokenizer has no [BOS] to start a continuation after): write [MASK] where a "
                                       "token should go\n")
