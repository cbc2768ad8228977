"""The ILM unit: what the train/evaluate recipes call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from xlm.data.tokenizers import Tokenizer

from .collators import IlmLMCollator, IlmPredictCollator, IlmSeq2SeqCollator, build_train_batch
from .loss import ilm_loss, insertion_log_normaliser
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

    @torch.no_grad()
    def target_probs(self, examples: Sequence[Mapping[str, Any]],
                     reveal: Sequence[int]) -> Float[Tensor, "rows target"]:
        """Per row, with the target's first `reveal[r]` tokens kept and the rest dropped (so all missing tokens
        share the gap after the kept ones), the insertion distribution's mass on each missing slot's token in that
        gap, over the share the training target gives it there (its count among the n missing tokens, over n):
        1 where the model puts on the token all the mass its objective asks for, as a masked model's 1 is all
        of its slot's mass. NaN at the kept slots. What the star probe reads (`xlm.data.tasks.star.probe_star`)."""
        prompts, contents = self._seq2seq.rows(examples)
        drops = [list(range(r, len(c))) for r, c in zip(reveal, contents)]
        batch = build_train_batch(prompts, contents, drops, self.tokenizer)
        device = next(self.model.parameters()).device
        token_logits, _ = self.model(batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
        logits = token_logits.float().cpu()
        log_z = insertion_log_normaliser(logits, batch["gap_mask"])
        bos_col = int(batch["gap_mask"].int().argmax(dim=1)[0])
        out = torch.full((len(examples), max(len(c) for c in contents)), float("nan"))
        for r, (content, kept) in enumerate(zip(contents, reveal)):
            missing = content[kept:]
            gap = logits[r, bos_col + kept] - log_z[r]
            for slot, token in enumerate(missing, start=kept):
                out[r, slot] = gap[token].exp() * len(missing) / missing.count(token)
        return out
