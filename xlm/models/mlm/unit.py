"""The MLM unit: what the train/evaluate recipes call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from xlm.data.tokenizers import Tokenizer
from xlm.nn import token_probs_at
from xlm.nn.loss_shaping import whole_mask_probability

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
        self.training_step = 0  # the trainer's step (set_training_step), for the whole-mask curriculum

    def set_training_step(self, step: int) -> None:
        self.training_step = step

    def _whole_prob(self) -> float:
        """The curriculum's chance of a row masked whole now; 0 outside training (evaluation's plain objective)."""
        config = self.model.config
        if not self.model.training:
            return 0.0
        return whole_mask_probability(self.training_step, start=config.whole_mask_prob, steps=config.whole_mask_steps)

    def collate_train(self, examples: Sequence[Mapping[str, Any]], *,
                      generator: torch.Generator | None = None) -> MlmTrainBatch:
        """Seq2seq rows carry `prompt_ids`/`target_ids`; LM rows carry `input_ids`."""
        collate = self._seq2seq if "prompt_ids" in examples[0] else self._lm
        return collate(examples, generator=generator, whole_prob=self._whole_prob(),
                       mask_repeats=self.model.config.mask_repeats and self.model.training)

    def collate_predict(self, examples: Sequence[Mapping[str, Any]]) -> MlmPredictBatch:
        return self._predict(examples)

    def loss(self, model: torch.nn.Module, batch: MlmTrainBatch) -> MlmLossDict:
        config = self.model.config
        return mlm_loss(model, batch, weighting=config.loss_weighting,
                        focal_gamma=config.focal_gamma if self.model.training else 0.0)

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
