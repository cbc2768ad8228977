"""The ARLM unit: what the train/evaluate recipes call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from xlm.data.tokenizers import Tokenizer

from .collators import ArlmContinuationPredictCollator, ArlmLMCollator, ArlmSeq2SeqCollator, ArlmSeq2SeqPredictCollator
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
        self._seq2seq = ArlmSeq2SeqCollator(tokenizer, max_len)
        predict = ArlmSeq2SeqPredictCollator if sampler.prompt_format == "seq2seq" else ArlmContinuationPredictCollator
        self._predict = predict(tokenizer, max_len)
        self.predictor = ArlmPredictor(model, tokenizer, sampler)

    def collate_train(self, examples: Sequence[Mapping[str, Any]]) -> ArlmTrainBatch:
        """Seq2seq rows carry `prompt_ids`/`target_ids`; LM rows carry `input_ids`."""
        return self._seq2seq(examples) if "prompt_ids" in examples[0] else self._lm(examples)

    def collate_predict(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return dict(self._predict(examples))

    def loss(self, model: torch.nn.Module, batch: ArlmTrainBatch) -> ArlmLossDict:
        return arlm_loss(model, batch)

    def predict(self, batch: Mapping[str, Any], *, generator: torch.Generator | None = None) -> ArlmPredictionDict:
        return self.predictor.predict(batch, generator=generator)  # type: ignore[arg-type]
