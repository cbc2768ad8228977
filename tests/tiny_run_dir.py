"""A finished arlm_tiny run dir written directly (no training), for tests of loading and cards."""

from pathlib import Path

import torch

import xlm
from xlm.data.tokenizers import WordTokenizer
from xlm.run_dir import write_run_dir

TOK = WordTokenizer([str(i) for i in range(20)])


def tiny_run_dir(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = xlm.create_model("arlm_tiny", vocab_size=TOK.vocab_size)
    family = xlm.get_family("arlm")
    write_run_dir(path, model=model, family="arlm", arch="arlm_tiny", model_config=model.config,
                  sampler_config=family.sampler_config_class(max_new_tokens=5, strategy="greedy"), tokenizer=TOK,
                  task="star_easy", train_config=None, metrics={})
    return path
