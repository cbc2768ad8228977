"""The MDLM unit: what the train/evaluate recipes call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from xlm.data.tokenizers import Tokenizer
from xlm.nn import token_probs_at
from xlm.nn.loss_shaping import whole_mask_probability

from .collators import MdlmLMCollator, MdlmSeq2SeqCollator, MdlmSeq2SeqPredictCollator
from .loss import mdlm_loss
from .model import MdlmModel
from .noise import build_noise_schedule
from .predictor import MdlmPredictor, MdlmSamplerConfig
from .types import MdlmLossDict, MdlmPredictionDict, MdlmTrainBatch


class MdlmUnit:
    """Seq2seq training uses the block the sampler fills (`sampler.max_new_tokens`)."""

    def __init__(self, model: MdlmModel, tokenizer: Tokenizer, sampler: MdlmSamplerConfig) -> None:
        config = model.config
        if not 0 <= tokenizer.mask_token_id < config.vocab_size:
            raise ValueError(f"the tokenizer's [MASK] id {tokenizer.mask_token_id} is outside the model's "
                             f"vocabulary of {config.vocab_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.schedule = build_noise_schedule(config)
        max_len, block = config.max_seq_len, sampler.max_new_tokens
        self._lm = MdlmLMCollator(tokenizer, max_len)
        self._seq2seq = MdlmSeq2SeqCollator(tokenizer, max_len, block)
        self._predict = MdlmSeq2SeqPredictCollator(tokenizer, max_len, block)
        self.predictor = MdlmPredictor(model, tokenizer, sampler, schedule=self.schedule)
        self.training_step = 0  # the trainer's step (set_training_step), for the whole-mask curriculum

    def set_training_step(self, step: int) -> None:
        self.training_step = step

    def collate_train(self, examples: Sequence[Mapping[str, Any]]) -> MdlmTrainBatch:
        """Seq2seq rows carry `prompt_ids`/`target_ids`; LM rows carry `input_ids`."""
        return self._seq2seq(examples) if "prompt_ids" in examples[0] else self._lm(examples)

    def collate_predict(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return dict(self._predict(examples))

    def loss(self, model: torch.nn.Module, batch: MdlmTrainBatch) -> MdlmLossDict:
        config, training = self.model.config, self.model.training  # evaluation: the plain NELBO
        whole_prob = whole_mask_probability(self.training_step, start=config.whole_mask_prob,
                                            steps=config.whole_mask_steps) if training else 0.0
        return mdlm_loss(model, batch, schedule=self.schedule, mask_token_id=self.tokenizer.mask_token_id,
                         sampling_eps=config.sampling_eps, antithetic=config.antithetic_sampling,
                         whole_prob=whole_prob, focal_gamma=config.focal_gamma if training else 0.0,
                         mask_repeats=config.mask_repeats and training,
                         elbo_weight=config.loss_weighting == "elbo" or not training)

    def predict(self, batch: Mapping[str, Any], *, generator: torch.Generator | None = None) -> MdlmPredictionDict:
        return self.predictor.predict(batch, generator=generator)  # type: ignore[arg-type]

    @torch.no_grad()
    def target_probs(self, examples: Sequence[Mapping[str, Any]],
                     reveal: Sequence[int]) -> Float[Tensor, "rows block"]:
        """Per row, p(the clean block's token at each block slot | the prompt and the block's first `reveal[r]`
        slots, the rest [MASK]) under SUBS, from one forward and no randomness; NaN at the revealed slots. The
        time conditioning is the sigma whose masking probability is the row's masked fraction of the block (at
        most the schedule's at t = 1, where sampling starts). What the star probe reads
        (`xlm.data.tasks.star.probe_star`)."""
        batch = self._seq2seq(examples)
        x0, noise_mask = batch["input_ids"], batch["noise_mask"]
        block = self._seq2seq.block_size
        start = x0.size(1) - block
        hidden = noise_mask & (torch.arange(x0.size(1)) >= start + torch.tensor(list(reveal))[:, None])
        fraction = hidden.sum(dim=1).float() / block
        top = self.schedule.move_chance(torch.ones(1))
        sigma = -torch.log1p(-torch.minimum(fraction, top))
        device = next(self.model.parameters()).device
        logits = self.model(x0.masked_fill(hidden, self.tokenizer.mask_token_id).to(device), sigma.to(device),
                            attention_mask=batch["attention_mask"].to(device), output_positions=hidden.to(device))
        logits = logits.float()
        logits[:, self.tokenizer.mask_token_id] = float("-inf")
        return token_probs_at(logits, x0[hidden], hidden)[:, start:]
