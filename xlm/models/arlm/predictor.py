"""Left-to-right sampling with a KV cache; each row stops at its own [EOS] (a model whose own tokenizer
has none writes max_new_tokens, as transformers' generate does)."""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from xlm.data.tokenizers import Tokenizer, optional_token_id, padding_id
from xlm.errors import XlmWarning
from xlm.nn.config_checks import check_field_types, check_sampling_filters
from xlm.nn.cpu import prepacked_linears
from xlm.nn.sampling import select_tokens
from xlm.trace import StepHook, emit

from .model import ArlmModel
from .types import ArlmPredictBatch, ArlmPredictionDict

STRATEGIES = ("greedy", "sample")
#: How a prompt is laid out for the model: xlm's seq2seq rows (`prompt + [BOS]`, then the target), or
#: the prompt alone, continued as a language model continues text (transformers' generate).
PROMPT_FORMATS = ("seq2seq", "continuation")


@dataclass(kw_only=True)
class ArlmSamplerConfig:
    strategy: str = "greedy"  # "greedy" | "sample" (temperature, top_k, top_p apply)
    # "seq2seq" | "continuation": what the model was trained on; training records it from its task, run dirs
    # from before it keep "seq2seq", checkpoints from other layouts (HF, ...) load with "continuation"
    prompt_format: str = "seq2seq"
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    max_new_tokens: int = 64
    use_kv_cache: bool = True
    # CPU: decode steps use weights reordered once for the batch's row count (xlm.nn.cpu.prepacked);
    # costs one copy of the linear weights while generating
    prepack_weights: bool = True

    def __post_init__(self) -> None:
        check_field_types(self, prefix="sampler.")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"sampler.strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"sampler.prompt_format must be one of {PROMPT_FORMATS}, got {self.prompt_format!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"sampler.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        check_sampling_filters(self)


class ArlmPredictor:
    def __init__(self, model: ArlmModel, tokenizer: Tokenizer, config: ArlmSamplerConfig) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.on_step: StepHook | None = None  # see xlm.trace

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 max_new_tokens: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Left-padded prompts (B, T) -> (B, T + n); rows that ended are padded after [EOS]."""
        cfg = self.config
        steps = max_new_tokens or cfg.max_new_tokens
        device = next(self.model.parameters()).device
        input_ids = input_ids.to(device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        mask = attention_mask.to(device=device, dtype=torch.bool)
        batch, prompt_len = input_ids.shape
        eos, pad = optional_token_id(self.tokenizer, "eos"), padding_id(self.tokenizer)
        steps = self._within_positions(steps, prompt_len)

        total = prompt_len + steps
        cache = self.model.new_kv_cache(batch, total) if cfg.use_kv_cache else None
        # written in place, one column per step: no per-step concatenation of ids or mask
        sequences = torch.full((batch, total), pad, dtype=input_ids.dtype, device=device)
        sequences[:, :prompt_len] = input_ids
        full_mask = torch.ones(batch, total, dtype=torch.bool, device=device)
        full_mask[:, :prompt_len] = mask
        last_column = torch.zeros_like(mask)
        last_column[:, -1] = True
        logits = self.model(input_ids, attention_mask=mask, kv_cache=cache, output_positions=last_column)
        # each row's next position is its count of real tokens: left padding takes no positions
        next_position = mask.sum(1, keepdim=True)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        end = prompt_len
        prepack = cfg.prepack_weights and cache is not None  # a cached decode step has one row per sequence
        with prepacked_linears(self.model, batch) if prepack else nullcontext():
            for step in range(steps):
                next_ids = select_tokens(logits, greedy=cfg.strategy == "greedy", temperature=cfg.temperature,
                                         top_k=cfg.top_k, top_p=cfg.top_p, generator=generator)
                next_ids = next_ids.masked_fill(finished, pad)
                sequences[:, end] = next_ids
                end += 1
                if self.on_step is not None:
                    written = torch.zeros(batch, end, dtype=torch.bool, device=device)
                    written[:, -1] = ~finished
                    emit(self.on_step, step, sequences[:, :end], written)
                if eos is not None:
                    finished |= next_ids == eos
                if bool(finished.all()):
                    break
                if cache is not None:
                    logits = self.model(next_ids[:, None], attention_mask=full_mask[:, :end], kv_cache=cache,
                                        positions=next_position + step)[:, -1]
                else:
                    logits = self.model(sequences[:, :end], attention_mask=full_mask[:, :end])[:, -1]
        return sequences[:, :end]

    def _within_positions(self, steps: int, prompt_len: int) -> int:
        """A learned position embedding has max_seq_len rows: generation stops there, with a warning, rather
        than failing at the first position past it (rotary models read any position)."""
        if getattr(self.model, "embed_positions", None) is None:
            return steps
        room = self.model.config.max_seq_len - prompt_len
        if steps <= room:
            return steps
        warnings.warn(f"generating {room} new tokens, not {steps}: this model's learned positions end at "
                      f"max_seq_len={self.model.config.max_seq_len} and the prompt takes {prompt_len}",
                      XlmWarning, stacklevel=4)
        return room

    def predict(self, batch: ArlmPredictBatch, *, generator: torch.Generator | None = None) -> ArlmPredictionDict:
        sequences = self.generate(batch["input_ids"], batch["attention_mask"], generator=generator)
        start = batch["input_ids"].size(1)
        eos = optional_token_id(self.tokenizer, "eos")
        ids = [self._until_eos(row, eos) for row in sequences[:, start:].tolist()]
        return {"ids": ids, "text": [self.tokenizer.decode(r) for r in ids], "sequences": sequences, "start": start}

    def _until_eos(self, row: list[int], eos: int | None) -> list[int]:
        """A continuation keeps every token before [EOS], as transformers' generate does; a seq2seq
        target has no special tokens."""
        if eos in row:
            row = row[: row.index(eos)]
        if self.config.prompt_format == "continuation":
            return row
        return [t for t in row if t not in self.tokenizer.special_ids]
