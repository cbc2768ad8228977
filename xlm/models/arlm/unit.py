"""The ARLM unit: what the train/evaluate recipes call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from xlm.data.tokenizers import Tokenizer
from xlm.nn import token_probs_at

from .collators import (
    IGNORE_INDEX,
    ArlmContinuationPredictCollator,
    ArlmLMCollator,
    ArlmSeq2SeqCollator,
    ArlmSeq2SeqPredictCollator,
)
from .loss import arlm_loss
from .model import ArlmModel
from .predictor import ArlmPredictor, ArlmSamplerConfig
from .types import ArlmLossDict, ArlmPredictionDict, ArlmTrainBatch


class ArlmUnit:
    def __init__(self, model: ArlmModel, tokenizer: Tokenizer, sampler: ArlmSamplerConfig) -> None:
        self.model = model
        self.tokenizer = tokenizer
        max_len = model.config.max_seq_len
        self._lm = ArlmLMCollator(tokenizer, max_len)
        predict = ArlmSeq2SeqPredictCollator if sampler.prompt_format == "seq2seq" else ArlmContinuationPredictCollator
        self._predict = predict(tokenizer, max_len)
        self.predictor = ArlmPredictor(model, tokenizer, sampler)

    @cached_property
    def _seq2seq(self) -> ArlmSeq2SeqCollator:
        """Built on first use: it needs [BOS] and [EOS], which a model's own tokenizer may lack while
        it still continues text."""
        return ArlmSeq2SeqCollator(self.tokenizer, self.model.config.max_seq_len)

    def collate_train(self, examples: Sequence[Mapping[str, Any]]) -> ArlmTrainBatch:
        """Seq2seq rows carry `prompt_ids`/`target_ids`; LM rows carry `input_ids`."""
        return self._seq2seq(examples) if "prompt_ids" in examples[0] else self._lm(examples)

    def collate_predict(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return dict(self._predict(examples))

    def loss(self, model: torch.nn.Module, batch: ArlmTrainBatch) -> ArlmLossDict:
        return arlm_loss(model, batch)

    def predict(self, batch: Mapping[str, Any], *, generator: torch.Generator | None = None) -> ArlmPredictionDict:
        return self.predictor.predict(batch, generator=generator)  # type: ignore[arg-type]

    @torch.no_grad()
    def target_probs(self, examples: Sequence[Mapping[str, Any]],
                     reveal: Sequence[int]) -> Float[Tensor, "rows block"]:
        """Per row, P(target slot `reveal[r]` | the prompt and the target before it), teacher forced; NaN at
        every other slot, since a left-to-right model reads no slot with a later one hidden and an earlier one
        missing. Slots count the target then [EOS]. What the star probe reads (`xlm.data.tasks.star.probe_star`)."""
        batch = self._seq2seq(examples)
        labels = batch["labels"]
        read = labels != IGNORE_INDEX
        device = next(self.model.parameters()).device
        logits = self.model(batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                            output_positions=read.to(device))
        grid = token_probs_at(logits, labels[read], read)
        slots = read.cumsum(dim=1) - 1  # the target slot each read position predicts
        keep = read & (slots == torch.tensor(list(reveal))[:, None])
        width = int(read.sum(dim=1).max())
        out = torch.full((len(examples), width), float("nan"))
        rows, cols = keep.nonzero(as_tuple=True)
        out[rows, slots[rows, cols]] = grid[rows, cols]
        return out
