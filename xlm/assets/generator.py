"""Generator: a model, its tokenizer and its family's predictor, ready to complete prompts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from xlm.data.tokenizers import Tokenizer
from xlm.registry import Family
from xlm.trace import StepHook


class Generator:
    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, family: Family, sampler_config: Any) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.family = family
        self.sampler_config = sampler_config

    def _predict(self, prompts: Sequence[Sequence[int]], max_new_tokens: int | None,
                 generator: torch.Generator | None, on_step: StepHook | None = None) -> list[list[int]]:
        config = self.sampler_config if max_new_tokens is None else replace(self.sampler_config,
                                                                            max_new_tokens=max_new_tokens)
        unit = self.family.unit_factory(self.model, self.tokenizer, config)
        unit.predictor.on_step = on_step
        batch = unit.collate_predict([{"prompt_ids": list(p)} for p in prompts])
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        with torch.no_grad():
            return unit.predict(batch, generator=generator)["ids"]

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int | None = None, seed: int | None = None,
                 on_step: StepHook | None = None) -> list[str]:
        """Each prompt's completion (new text only). A word the tokenizer does not know is an error
        naming it. `on_step` receives every sampler step (xlm.trace)."""
        ids = [self.tokenizer.encode(p) for p in prompts]
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return [self.tokenizer.decode(row) for row in self._predict(ids, max_new_tokens, generator, on_step)]

    def generate_ids(self, prompt_ids: Int[Tensor, "batch seq"] | Sequence[Sequence[int]],
                     max_new_tokens: int | None = None, *, seed: int | None = None) -> Int[Tensor, "batch new"]:
        """New token ids only, right padded with [PAD] to the longest row; no tokenizer needed for
        the prompt (`prompt_ids` rows are unpadded)."""
        rows = prompt_ids.tolist() if isinstance(prompt_ids, Tensor) else [list(r) for r in prompt_ids]
        vocab = self.tokenizer.vocab_size
        bad = sorted({i for r in rows for i in r if not 0 <= i < vocab})
        if bad:
            raise ValueError(f"prompt ids {bad[:5]} are outside the vocabulary of {vocab}")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        out = self._predict(rows, max_new_tokens, generator)
        width = max((len(r) for r in out), default=0)
        result = torch.full((len(out), width), self.tokenizer.pad_token_id, dtype=torch.long)
        for i, r in enumerate(out):
            result[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return result
