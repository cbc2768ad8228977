"""Where an ARLM's prompt format comes from: run dirs record it (those from before it keep xlm's
seq2seq `prompt + [BOS]`), the call or the card can change it."""

import json

import pytest
import torch

import xlm
from xlm.data.tokenizers import WordTokenizer
from xlm.errors import InvalidValueError
from xlm.models.arlm.predictor import ArlmSamplerConfig
from xlm.run_dir import write_run_dir

TOK = WordTokenizer([str(i) for i in range(10)])


def _run_dir(path, **sampler):
    torch.manual_seed(0)
    model = xlm.create_model("arlm_tiny", vocab_size=TOK.vocab_size)
    write_run_dir(path, model=model, family="arlm", arch="arlm_tiny", model_config=model.config,
                  sampler_config=ArlmSamplerConfig(max_new_tokens=4, **sampler), tokenizer=TOK, task=None,
                  train_config=None, metrics={})
    return path


def _prompt_rows(generator):
    unit = generator.family.unit_factory(generator.model, generator.tokenizer, generator.sampler_config)
    return unit.collate_predict([{"prompt_ids": [7, 8]}])["input_ids"].tolist()


def test_a_run_dir_from_before_the_field_keeps_seq2seq_prompts(tmp_path):
    run = _run_dir(tmp_path / "old")
    config = json.loads((run / "config.json").read_text())
    del config["sampler_config"]["prompt_format"]  # as written before the field existed
    (run / "config.json").write_text(json.dumps(config))
    generator = xlm.load_generator(run)
    assert generator.sampler_config.prompt_format == "seq2seq"
    assert _prompt_rows(generator) == [[7, 8, TOK.bos_token_id]]


def test_the_recorded_format_and_the_call_choose_the_layout(tmp_path):
    run = _run_dir(tmp_path / "lm", prompt_format="continuation")
    assert json.loads((run / "config.json").read_text())["sampler_config"]["prompt_format"] == "continuation"
    assert _prompt_rows(xlm.load_generator(run)) == [[7, 8]]
    assert _prompt_rows(xlm.load_generator(run, prompt_format="seq2seq")) == [[7, 8, TOK.bos_token_id]]
    with pytest.raises(InvalidValueError, match="prompt_format must be one of \\('seq2seq', 'continuation'\\)"):
        xlm.load_generator(run, prompt_format="chat")
