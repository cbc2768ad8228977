"""Generator: a model, its tokenizer and its family's predictor, ready to complete prompts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from xlm.data.tokenizers import Tokenizer, padding_id
from xlm.errors import XlmUserError
from xlm.registry import Family
from xlm.trace import StepHook


class TokenizerMismatchError(XlmUserError, ValueError):
    """A tokenizer with ids that the model's embedding has no row for."""


class NotSupportedByFamilyError(XlmUserError, TypeError):
    """A generator call that the model's family does not implement."""


def check_tokenizer_fits(tokenizer: Tokenizer, model: torch.nn.Module) -> None:
    """Every id the tokenizer can give has a row in the model's embedding (a model whose config
    names no vocab_size is not checked)."""
    rows = getattr(getattr(model, "config", None), "vocab_size", None)
    if rows is not None and tokenizer.vocab_size > rows:
        raise TokenizerMismatchError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model's embedding has {rows} rows: ids "
            f"{rows}..{tokenizer.vocab_size - 1} would index past it; use the tokenizer the model was trained with")


def _as_prompts(prompts: str | Sequence[str]) -> list[str]:
    """A list of prompts; a str is one (iterating it would give one prompt per character)."""
    return [prompts] if isinstance(prompts, str) else list(prompts)


class Generator:
    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, family: Family, sampler_config: Any) -> None:
        check_tokenizer_fits(tokenizer, model)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.family = family
        self.sampler_config = sampler_config

    def _predict(self, prompts: Sequence[Sequence[int]], max_new_tokens: int | None,
                 generator: torch.Generator | None, on_step: StepHook | None = None) -> list[list[int]]:
        if not prompts:
            return []
        config = self.sampler_config if max_new_tokens is None else replace(self.sampler_config,
                                                                            max_new_tokens=max_new_tokens)
        unit = self.family.unit_factory(self.model, self.tokenizer, config)
        unit.predictor.on_step = on_step
        batch = unit.collate_predict([{"prompt_ids": list(p)} for p in prompts])
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        with torch.no_grad():
            return unit.predict(batch, generator=generator)["ids"]

    def generate(self, prompts: str | Sequence[str], *, max_new_tokens: int | None = None, seed: int | None = None,
                 on_step: StepHook | None = None) -> list[str]:
        """Each prompt's completion (new text only); a str is one prompt, not a sequence of one-letter ones.
        A word the tokenizer does not know is an error naming it. `on_step` receives every sampler step
        (xlm.trace)."""
        ids = [self.tokenizer.encode(p) for p in _as_prompts(prompts)]
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
        result = torch.full((len(out), width), padding_id(self.tokenizer), dtype=torch.long)
        for i, r in enumerate(out):
            result[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return result

    def can_fill_masks(self) -> bool:
        """Whether this family's predictor fills the mask tokens of a given text (mlm's does)."""
        unit = self.family.unit_factory(self.model, self.tokenizer, self.sampler_config)
        return callable(getattr(unit.predictor, "fill_masks", None))

    def fill_masks(self, texts: str | Sequence[str], *, seed: int | None = None,
                   on_step: StepHook | None = None) -> list[str]:
        """Each text with every mask token in it filled by the sampler, for families whose predictor
        fills masks in a given text (mlm); an HF model's own tokenizer adds its special tokens around
        the text, as transformers' fill-mask pipeline does. `on_step` receives every sampler step."""
        unit = self.family.unit_factory(self.model, self.tokenizer, self.sampler_config)
        unit.predictor.on_step = on_step
        fill = getattr(unit.predictor, "fill_masks", None)
        if fill is None:
            raise NotSupportedByFamilyError(f"the {self.family.name} family's predictor does not fill masks in a "
                                            f"given text (it has no fill_masks); load an mlm model for this")
        texts = _as_prompts(texts)
        if not texts:
            return []
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            return fill(texts, generator=generator)
