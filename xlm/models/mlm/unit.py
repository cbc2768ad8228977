"""The MLM unit: what the train/evaluate recipes call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from xlm.data.tokenizers import Tokenizer
from xlm.nn import token_probs_at

from .collators import MlmLMCollator, MlmPredictCollator, MlmSeq2SeqCollator
from .loss import mlm_loss
from .model import MlmModel
from .predictor import MlmPredictor, MlmSamplerConfig
from .types import MlmLossDict, MlmPredictBatch, MlmPredictionDict, MlmTrainBatch


class MlmUnit:
    """Seq2seq training and prediction share one block of `sampler.max_new_tokens` positions."""

    def __init__(self, model: MlmModel, tokenizer: Tokenizer, sampler: MlmSamplerConfig) -> None:
        self.model = model
        self.tokenizer = tokenizer
        max_len = model.config.max_seq_len
        self._seq2seq = MlmSeq2SeqCollator(tokenizer, block_size=sampler.max_new_tokens, max_len=max_len)
        self._lm = MlmLMCollator(tokenizer, max_len=max_len)
        self._predict = MlmPredictCollator(tokenizer, block_size=sampler.max_new_tokens, max_len=max_len)
        self.predictor = MlmPredictor(model, tokenizer, sampler)

    def collate_train(self, examples: Sequence[Mapping[str, Any]], *,
                      generator: torch.Generator | None = None) -> MlmTrainBatch:
        """Seq2seq rows carry `prompt_ids`/`target_ids`; LM rows carry `input_ids`."""
        collate = self._seq2seq if "prompt_ids" in examples[0] else self._lm
        return collate(examples, generator=generator)

    def collate_predict(self, examples: Sequence[Mapping[str, Any]]) -> MlmPredictBatch:
        return self._predict(examples)

    def loss(self, model: torch.nn.Module, batch: MlmTrainBatch) -> MlmLossDict:
        return mlm_loss(model, batch, weighting=self.model.config.loss_weighting)

    def predict(self, batch: Mapping[str, Any], *, generator: torch.Generator | None = None) -> MlmPredictionDict:
        return self.predictor.predict(batch, generator=generator)  # type: ignore[arg-type]

    @torch.no_grad()
    def target_probs(self, examples: Sequence[Mapping[str, Any]],
                     reveal: Sequence[int]) -> Float[Tensor, "rows block"]:
        """Per row, P(the clean block's token at each block slot | the prompt and the block's first `reveal[r]`
        slots, the rest [MASK]), from one forward and no randomness; NaN at the revealed slots. What the star
        probe reads (`xlm.data.tasks.star.probe_star`)."""
        target_ids, attention_mask, maskable = self._seq2seq.clean_rows(examples)
        start = target_ids.size(1) - self._seq2seq.block_size
        hidden = maskable & (torch.arange(target_ids.size(1)) >= start + torch.tensor(list(reveal))[:, None])
        device = next(self.model.parameters()).device
        logits = self.model(target_ids.masked_fill(hidden, self.tokenizer.mask_token_id).to(device),
                            attention_mask=attention_mask.to(device), output_positions=hidden.to(device))
        return token_probs_at(logits, target_ids[hidden], hidden)[:, start:]
