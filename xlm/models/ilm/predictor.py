"""Insertion sampling: grow each row one (gap, token) pair (or a few) per model call.

Each step runs the model once on the current rows and reads the stop head: a row whose stop
probability reaches `stop_threshold` is done. The other rows pick a (gap, token) pair from the
joint softmax over all their gaps and tokens (`greedy`: the argmax; `sample`: temperature, then
top-k / top-p over the joint distribution), and the token is inserted after that gap.

Rows are never reshuffled: an inserted token is appended as a new column with the position it
takes in the sequence, and the positions of the tokens after it move up by one (RoPE reads
positions, not columns). Rows that insert nothing in a step get a [PAD] column hidden from
attention. The model itself only sees the rows still going, each with its real columns first and
cut to the widest of them, so rows that finished early and the [PAD] columns cost nothing (a batch
runs as many calls as its slowest row, but those calls are on that row alone). A row also stops
when it has inserted `max_new_tokens` tokens; the whole batch stops after `max_steps` model calls.

`insertions_per_step = k > 1` inserts up to k pairs in distinct gaps at once (each gap with its
best token; under `sample`, "best" after Gumbel noise, i.e. sampling without replacement over
gaps). Beyond the first, a pair is taken only if its probability is at least
`multi_insertion_min_ratio` times the most probable pair's: a trained model puts about 1/n of its
mass on each of the n missing tokens and almost none on a gap that is complete, so the rule fills
the gaps that need tokens and leaves the complete ones alone (taking the k best gaps regardless
fills complete gaps with wrong tokens whenever fewer than k gaps are open). Nor is one token
inserted twice in a step: where a repeated token may go on either side of its twin, the model
splits its mass between the two gaps, and taking both would insert it once too often.

Seq2seq rows only insert from [BOS] on (never into the prompt); unconditional rows start from
`[CLS] [BOS]`. [PAD], [MASK] and [CLS] are never inserted. With `on_step` set (xlm.trace) every
step reports the rows in sequence order (padding last) with the tokens it inserted marked; an
insertion moves the tokens after it, so unlike the other families a position can be reported
as written more than once.

The stop head reads [CLS] in column 0, or, where the batch gives `cls_position` (xlm-core's
left-padded prefixes), in that column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from xlm.data.tokenizers import Tokenizer
from xlm.nn.config_checks import check_field_types, check_sampling_filters
from xlm.nn.sampling import filter_logits, select_tokens
from xlm.trace import StepHook, emit

from .metrics import insertion_predictions, ordered_rows
from .model import STOP
from .types import IlmPredictBatch, IlmPredictionDict

STRATEGIES = ("greedy", "sample")


@dataclass(kw_only=True)
class IlmSamplerConfig:
    max_new_tokens: int = 64  # most tokens a row may insert
    strategy: str = "greedy"  # "greedy" | "sample" (temperature, top_k, top_p apply, over all (gap, token) pairs)
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    stop_threshold: float = 0.5  # a row stops once the stop head's probability reaches this
    max_steps: int | None = None  # most model calls per batch; None = as many as needed (<= max_new_tokens + 1)
    insertions_per_step: int = 1  # k > 1: up to k (gap, token) pairs in distinct gaps per model call
    multi_insertion_min_ratio: float = 0.5  # k > 1: a further pair needs this fraction of the best pair's probability

    def __post_init__(self) -> None:
        check_field_types(self, prefix="sampler.")
        if self.max_new_tokens < 1:
            raise ValueError(f"sampler.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"sampler.strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        check_sampling_filters(self)
        if not 0.0 <= self.stop_threshold <= 1.0:
            raise ValueError(f"sampler.stop_threshold must be a probability in [0, 1], got {self.stop_threshold}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"sampler.max_steps must be >= 1 or null (until every row stops), got {self.max_steps}")
        if self.insertions_per_step < 1:
            raise ValueError(f"sampler.insertions_per_step must be >= 1, got {self.insertions_per_step}")
        if not 0.0 < self.multi_insertion_min_ratio <= 1.0:
            raise ValueError(f"sampler.multi_insertion_min_ratio must be in (0, 1] (a fraction of the best pair's "
                             f"probability), got {self.multi_insertion_min_ratio}")


def insert_columns(tokens: Int[Tensor, "batch seq"], positions: Int[Tensor, "batch seq"],
                   mask: Bool[Tensor, "batch seq"], gap_cols: Int[Tensor, "batch k"],
                   new_tokens: Int[Tensor, "batch k"], chosen: Bool[Tensor, "batch k"], pad_id: int,
                   ) -> tuple[Tensor, Tensor, Tensor, Bool[Tensor, "batch k"]]:
    """Insert `new_tokens[b, j]` right after the token in column `gap_cols[b, j]` wherever `chosen`
    (distinct gaps per row). The new tokens are appended as columns; every real token after an
    insertion point moves up by one position per insertion before it. Returns the new tokens,
    positions and mask, and which appended columns are real."""
    gap_pos = positions.gather(1, gap_cols)  # (batch, k)
    ranked = torch.where(chosen, gap_pos, torch.iinfo(positions.dtype).max)  # unchosen: after everything
    shift_old = (ranked[:, None, :] < positions[:, :, None]).sum(-1)  # insertions before each old token
    shift_new = (ranked[:, None, :] < ranked[:, :, None]).sum(-1)  # insertions before each new token
    old_pos = torch.where(mask, positions + shift_old, positions)
    new_pos = torch.where(chosen, gap_pos + shift_new + 1, 0)
    appended = torch.where(chosen, new_tokens, pad_id)
    return (torch.cat([tokens, appended], 1), torch.cat([old_pos, new_pos], 1), torch.cat([mask, chosen], 1), chosen)


def packed_rows(mask: Bool[Tensor, "batch seq"], done: Bool[Tensor, " batch"]) -> tuple[Tensor, Tensor]:
    """What the model needs to see: the rows not done (`active`, their batch indices) and, per such row,
    its real columns first, in column order, cut to the widest (`cols_of`, active x width). Finished
    rows and the [PAD] columns appended for rows that inserted less than others cost the model nothing."""
    active = (~done).nonzero().squeeze(1)
    real = mask[active]
    width = int(real.sum(1).max())
    cols_of = (~real).to(torch.uint8).argsort(dim=1, stable=True)[:, :width]
    return active, cols_of


class IlmPredictor:
    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, config: IlmSamplerConfig) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.never_inserted = sorted({tokenizer.pad_token_id, tokenizer.mask_token_id, tokenizer.cls_token_id})
        self.on_step: StepHook | None = None  # see xlm.trace: rows in sequence order, the step's insertions marked

    def _choose(self, logits: Float[Tensor, "batch seq vocab"], quota: Int[Tensor, " batch"],
                generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
        """Up to `quota[b]` (gap column, token) pairs per row, in distinct gaps: (cols, tokens, chosen)."""
        cfg = self.config
        batch, seq, vocab = logits.shape
        greedy = cfg.strategy == "greedy" or cfg.temperature == 0.0
        flat = logits.reshape(batch, seq * vocab)
        dead = ~flat.isfinite().any(dim=1)  # no pair left to insert (every one suppressed or impossible)
        flat = flat.masked_fill(dead[:, None], 0.0)  # sampled harmlessly, never chosen
        k = min(int(quota.max()), seq)
        if k == 1:
            index = select_tokens(flat, greedy=greedy, temperature=cfg.temperature, top_k=cfg.top_k,
                                  top_p=cfg.top_p, generator=generator)[:, None]
            score = flat.gather(1, index)
        else:
            if not greedy:
                flat = filter_logits(flat / cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
            log_probs = flat.log_softmax(dim=1)
            if not greedy:
                rand_device = generator.device if generator is not None else flat.device
                uniform = torch.rand(flat.shape, generator=generator, device=rand_device).to(flat.device)
                flat = flat - torch.log(-torch.log(uniform.clamp(min=1e-20, max=1.0 - 1e-7)))
            best, best_token = flat.view(batch, seq, vocab).max(dim=-1)  # each gap's best token
            score, gap = best.topk(k, dim=1)
            index = gap * vocab + best_token.gather(1, gap)
            floor = log_probs.max(dim=1, keepdim=True).values + math.log(cfg.multi_insertion_min_ratio)
            confident = log_probs.gather(1, index) >= floor
            confident[:, 0] = True  # the step's first pair is taken as with k = 1
            tokens = index % vocab
            earlier = torch.ones(k, k, dtype=torch.bool, device=index.device).tril(-1)
            repeated = ((tokens[:, :, None] == tokens[:, None, :]) & earlier & confident[:, None, :]).any(-1)
            score = score.masked_fill(~confident | repeated, float("-inf"))
        chosen = (torch.arange(index.size(1), device=index.device)[None, :] < quota[:, None]) & score.isfinite()
        chosen &= ~dead[:, None]
        return index // vocab, index % vocab, chosen

    @torch.no_grad()
    def generate(self, input_ids: Int[Tensor, "batch seq"], attention_mask: Bool[Tensor, "batch seq"],
                 gap_mask: Bool[Tensor, "batch seq"], *, cls_position: Int[Tensor, " batch"] | None = None,
                 generator: torch.Generator | None = None) -> dict[str, Tensor | int]:
        """Insert into each row until it stops; `cls_position`: each row's [CLS] column, where it is not
        column 0. Returns the final `tokens`, `positions`, `mask` (columns out of sequence order), `inserted`
        (the appended real columns), `num_inserted` per row, `num_model_calls` and `row_calls` (the calls
        each row took part in before it stopped)."""
        cfg, tok = self.config, self.tokenizer
        device = next(self.model.parameters()).device
        tokens = input_ids.to(device)
        mask = attention_mask.to(device=device, dtype=torch.bool)
        gaps = gap_mask.to(device=device, dtype=torch.bool) & mask
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)
        batch, start = tokens.shape
        cls_col = None if cls_position is None else cls_position.to(device)
        num_inserted = torch.zeros(batch, dtype=torch.long, device=device)
        done = torch.zeros(batch, dtype=torch.bool, device=device)
        row_calls = torch.zeros(batch, dtype=torch.long, device=device)
        calls = 0
        while True:
            done |= num_inserted >= cfg.max_new_tokens
            if bool(done.all()) or (cfg.max_steps is not None and calls >= cfg.max_steps):
                break
            active, cols_of = packed_rows(mask, done)
            cls = {}  # where [CLS] is not in column 0: its packed column, after the real columns before it
            if cls_col is not None:
                before = torch.arange(mask.size(1), device=device)[None, :] < cls_col[active, None]
                cls = {"cls_position": (mask[active] & before).sum(1)}
            token_logits, stop_logits = self.model(tokens[active].gather(1, cols_of),
                                                   attention_mask=mask[active].gather(1, cols_of),
                                                   positions=positions[active].gather(1, cols_of), **cls)
            calls += 1
            row_calls[active] += 1
            done[active] |= stop_logits.float().softmax(-1)[:, STOP] >= cfg.stop_threshold
            if bool(done.all()):
                break
            logits = token_logits.float()
            logits[..., self.never_inserted] = float("-inf")
            logits = logits.masked_fill(~gaps[active].gather(1, cols_of)[..., None], float("-inf"))
            quota = torch.where(done, 0, (cfg.max_new_tokens - num_inserted).clamp(max=cfg.insertions_per_step))
            packed_cols, active_tokens, active_chosen = self._choose(logits, quota[active], generator)
            cols = torch.zeros(batch, packed_cols.size(1), dtype=torch.long, device=device)
            new_tokens, chosen = torch.zeros_like(cols), torch.zeros_like(cols, dtype=torch.bool)
            cols[active] = cols_of.gather(1, packed_cols)
            new_tokens[active], chosen[active] = active_tokens, active_chosen
            done[active] |= ~active_chosen.any(1)  # nowhere left to insert (every pair filtered out)
            used = chosen.any(0)  # drop the appended columns no row uses
            cols, new_tokens, chosen = cols[:, used], new_tokens[:, used], chosen[:, used]
            tokens, positions, mask, appended = insert_columns(tokens, positions, mask, cols, new_tokens, chosen,
                                                               tok.pad_token_id)
            gaps = torch.cat([gaps, appended], 1)
            num_inserted += chosen.sum(1)
            if self.on_step is not None:
                new = torch.zeros_like(mask)
                new[:, mask.size(1) - appended.size(1):] = appended
                order = torch.where(mask, positions, torch.iinfo(positions.dtype).max).argsort(dim=1, stable=True)
                emit(self.on_step, calls - 1, tokens.gather(1, order), new.gather(1, order))
        inserted = mask.clone()
        inserted[:, :start] = False
        return {"tokens": tokens, "positions": positions, "mask": mask, "inserted": inserted,
                "num_inserted": num_inserted, "num_model_calls": calls, "row_calls": row_calls}

    def predict(self, batch: IlmPredictBatch, *, generator: torch.Generator | None = None) -> IlmPredictionDict:
        out = self.generate(batch["input_ids"], batch["attention_mask"], batch["gap_mask"],
                            cls_position=batch.get("cls_position"), generator=generator)
        tokens, positions = out["tokens"], out["positions"]
        ids, text = insertion_predictions(tokens, positions, out["inserted"], self.tokenizer)  # type: ignore[arg-type]
        return {"ids": ids, "text": text, "sequences": ordered_rows(tokens, positions, out["mask"]),  # type: ignore[arg-type]
                "num_inserted": out["num_inserted"].tolist(),  # type: ignore[union-attr]
                "num_model_calls": int(out["num_model_calls"]),
                "row_calls": out["row_calls"].tolist()}  # type: ignore[union-attr]
