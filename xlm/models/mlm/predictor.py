"""Iterative unmasking: fill every [MASK] of the input over a budget of steps.

Each step runs the model once on the current sequence (logits at the masked positions only),
draws a token for every masked position (greedy, or temperature / top-k / top-p sampling),
scores how sure the model is there, and commits some of them:

* which positions: `random`, or by a confidence of the model's distribution at that position
  — `top_prob` (its largest probability), `prob_margin` (largest minus second largest) or
  `neg_entropy` (minus its entropy); confidence uses the model's own probabilities, before
  temperature and filtering;
* how many: `count` spreads each row's masked positions evenly over `num_steps`; `threshold`
  commits every position whose confidence reaches `confidence_threshold`, and at least the
  most confident one, and everything left at the last step. That is Fast-dLLM's parallel
  unmasking (for LLaDA) over one block: with greedy tokens `top_prob` is its confidence, the
  probability of the committed token; a threshold above 1 commits one position per call.

[MASK] is never predicted; [PAD] only inside the generated block (it is the block's fill after
[EOS]), never at a masked prompt position. Generation stops as soon as nothing is masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from xlm.data.collate import pad_rows
from xlm.data.tokenizers import Tokenizer
from xlm.nn.config_checks import check_field_types, check_sampling_filters
from xlm.nn.sampling import select_tokens
from xlm.trace import StepHook, emit

from .metrics import block_predictions
from .types import MlmPredictBatch, MlmPredictionDict

STRATEGIES = ("greedy", "sample")
POSITION_SELECTIONS = ("random", "top_prob", "prob_margin", "neg_entropy")
UNMASK_SCHEDULES = ("count", "threshold")


@dataclass(kw_only=True)
class MlmSamplerConfig:
    max_new_tokens: int = 64  # the generated block's size (training uses the same block)
    num_steps: int | None = None  # step budget; None = as many as masked positions (one per step)
    position_selection: str = "top_prob"  # "random" | "top_prob" | "prob_margin" | "neg_entropy"
    unmask_schedule: str = "count"  # "count" | "threshold"
    confidence_threshold: float = 0.9  # for "threshold"; neg_entropy confidences are <= 0
    strategy: str = "greedy"  # "greedy" | "sample" (temperature, top_k, top_p apply)
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        check_field_types(self, prefix="sampler.")
        if self.max_new_tokens < 1:
            raise ValueError(f"sampler.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_steps is not None and self.num_steps < 1:
            raise ValueError(f"sampler.num_steps must be >= 1 or null (one position per step), got {self.num_steps}")
        for name, allowed in (("position_selection", POSITION_SELECTIONS), ("unmask_schedule", UNMASK_SCHEDULES),
                              ("strategy", STRATEGIES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"sampler.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.unmask_schedule == "threshold" and self.position_selection == "random":
            raise ValueError("sampler.unmask_schedule='threshold' needs a confidence to threshold; set "
                             "sampler.position_selection to 'top_prob', 'prob_margin' or 'neg_entropy', "
                             "or use unmask_schedule='count' with random positions")
        check_sampling_filters(self)


def count_schedule(num_masked: Int[Tensor, " batch"], num_steps: int) -> Int[Tensor, "batch steps"]:
    """Positions to unmask per row and step: each row's count spread evenly (the step sizes
    differ by at most one, and sum to the row's count)."""
    edges = torch.arange(num_steps + 1, device=num_masked.device)[None, :] * num_masked[:, None] // num_steps
    return edges[:, 1:] - edges[:, :-1]


def confidence(logits: Float[Tensor, "n vocab"], kind: str) -> Float[Tensor, " n"]:
    """How sure the distribution softmax(logits) is: larger = surer."""
    probs = logits.float().softmax(dim=-1)
    if kind == "top_prob":
        return probs.max(dim=-1).values
    if kind == "prob_margin":
        top2 = probs.topk(2, dim=-1).values
        return top2[:, 0] - top2[:, 1]
    if kind == "neg_entropy":
        return -torch.special.entr(probs).sum(dim=-1)
    raise ValueError(f"confidence kind must be one of {POSITION_SELECTIONS[1:]}, got {kind!r}")


def _top_per_row(scores: Float[Tensor, "batch seq"], quota: Int[Tensor, " batch"]) -> Bool[Tensor, "batch seq"]:
    """The `quota[b]` highest-scoring positions of each row b."""
    order = scores.argsort(dim=1, descending=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(scores.size(1), device=scores.device)
                                             .expand_as(order).contiguous())
    return ranks < quota[:, None]


class MlmPredictor:
    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, config: MlmSamplerConfig) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.on_step: StepHook | None = None  # see xlm.trace

    @torch.no_grad()
    def generate(self, input_ids: Int[Tensor, "batch seq"], attention_mask: Bool[Tensor, "batch seq"] | None = None,
                 *, block_start: int = 0,
                 generator: torch.Generator | None = None) -> tuple[Int[Tensor, "batch seq"], Int[Tensor, " batch"]]:
        """`input_ids` with every [MASK] filled, and each row's model calls: the calls made while it
        still had a [MASK] (what it costs alone; every call runs the whole batch). Columns from
        `block_start` on are the generated block (where [PAD] may be predicted)."""
        cfg, tok = self.config, self.tokenizer
        device = next(self.model.parameters()).device
        x = input_ids.to(device).clone()
        mask = (torch.ones_like(x, dtype=torch.bool) if attention_mask is None
                else attention_mask.to(device=device, dtype=torch.bool))
        pad_forbidden = torch.arange(x.size(1), device=device)[None, :].expand_as(x) < block_start
        num_masked = (x == tok.mask_token_id).sum(dim=1)
        num_steps = cfg.num_steps or max(int(num_masked.max()), 1)
        quotas = count_schedule(num_masked, num_steps) if cfg.unmask_schedule == "count" else None
        row_calls = torch.zeros(x.size(0), dtype=torch.long, device=device)
        for step in range(num_steps):
            masked = x == tok.mask_token_id
            if not bool(masked.any()):
                break
            if quotas is not None and not bool(quotas[:, step].any()):
                continue
            logits = self.model(x, attention_mask=mask, output_positions=masked).float()
            row_calls += masked.any(dim=1)
            logits[:, tok.mask_token_id] = float("-inf")
            logits[pad_forbidden[masked], tok.pad_token_id] = float("-inf")
            tokens = select_tokens(logits, greedy=cfg.strategy == "greedy", temperature=cfg.temperature,
                                   top_k=cfg.top_k, top_p=cfg.top_p, generator=generator)
            if cfg.position_selection == "random":
                rand_device = generator.device if generator is not None else device
                flat = torch.rand(tokens.shape, generator=generator, device=rand_device).to(device)
            else:
                flat = confidence(logits, cfg.position_selection)
            scores = torch.full(x.shape, float("-inf"), device=device).masked_scatter(masked, flat)
            if quotas is not None:
                chosen = _top_per_row(scores, quotas[:, step]) & masked
            elif step == num_steps - 1:
                chosen = masked
            else:
                best = torch.zeros_like(masked).scatter_(1, scores.argmax(dim=1, keepdim=True), True)
                chosen = masked & ((scores >= cfg.confidence_threshold) | best)
            x = torch.where(chosen, torch.zeros_like(x).masked_scatter(masked, tokens), x)
            emit(self.on_step, step, x, chosen)
        return x, row_calls

    def fill_masks(self, texts: Sequence[str], *, generator: torch.Generator | None = None) -> list[str]:
        """Each text with every [MASK] in it filled by this sampler and decoded without special tokens:
        with one [MASK] and greedy selection, the model's most likely token there other than [MASK] and
        [PAD] (transformers' fill-mask pipeline gives its top-1 among all tokens)."""
        tok = self.tokenizer
        rows = [tok.encode(text) for text in texts]
        input_ids, attention_mask = pad_rows(rows, tok.pad_token_id)
        # no generated block: [PAD] is never a fill
        filled, _ = self.generate(input_ids, attention_mask, block_start=input_ids.size(1), generator=generator)
        return [tok.decode(ids[: len(row)]) for ids, row in zip(filled.tolist(), rows)]

    def predict(self, batch: MlmPredictBatch, *, generator: torch.Generator | None = None) -> MlmPredictionDict:
        sequences, row_calls = self.generate(batch["input_ids"], batch["attention_mask"],
                                             block_start=batch["block_start"], generator=generator)
        ids, text = block_predictions(sequences, batch["block_start"], self.tokenizer)
        return {"ids": ids, "text": text, "sequences": sequences, "block_start": batch["block_start"],
                # the row masked longest took part in every call
                "num_model_calls": int(row_calls.max()) if row_calls.numel() else 0,
                "row_calls": row_calls.tolist()}
