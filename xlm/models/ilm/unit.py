"""The ILM unit: what the train/evaluate recipes call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from xlm.data.tokenizers import Tokenizer

from .collators import IlmLMCollator, IlmPredictCollator, IlmSeq2SeqCollator
from .loss import ilm_loss
from .model import IlmModel
from .predictor import IlmPredictor, IlmSamplerConfig
from .types import IlmLossDict, IlmPredictBatch, IlmPredictionDict, IlmTrainBatch


class IlmUnit:
    """Seq2seq rows drop tokens from the target; LM rows from everything after the leading [BOS]."""

    def __init__(self, model: IlmModel, tokenizer: Tokenizer, sampler: IlmSamplerConfig) -> None:
        self.model = model
        self.tokenizer = tokenizer
        max_len = model.config.max_seq_len
        self._seq2seq = IlmSeq2SeqCollator(tokenizer, max_len=max_len)
        self._lm = IlmLMCollator(tokenizer, max_len=max_len)
        self._predict = IlmPredictCollator(tokenizer, max_new_tokens=sampler.max_new_tokens, max_len=max_len)
        self.predictor = IlmPredictor(model, tokenizer, sampler)

    def collate_train(self, examples: Sequence[Mapping[str, Any]], *,
                      generator: torch.Generator | None = None) -> IlmTrainBatch:
        """Seq2seq rows carry `prompt_ids`/`target_ids`; LM rows carry `input_ids`."""
        collate = self._seq2seq if "prompt_ids" in examples[0] else self._lm
        return collate(examples, generator=generator)

    def collate_predict(self, examples: Sequence[Mapping[str, Any]]) -> IlmPredictBatch:
        return self._predict(examples)

    def loss(self, model: torch.nn.Module, batch: IlmTrainBatch) -> IlmLossDict:
        config = self.model.config
        return ilm_loss(model, batch, stop_loss_weight=config.stop_loss_weight,
                        stopping_class_weight=config.stopping_class_weight, insertion_gaps=config.insertion_gaps)

    def predict(self, batch: Mapping[str, Any], *, generator: torch.Generator | None = None) -> IlmPredictionDict:
        return self.predictor.predict(batch, generator=generator)  # type: ignore[arg-type]
