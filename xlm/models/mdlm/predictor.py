"""MDLM samplers: ancestral (DDPM) sampling, plain and cached, and parallel unmasking by confidence.

From time t to s = t - 1/T a still-masked position stays masked with probability
mc(s)/mc(t) (mc = the schedule's masking probability) and otherwise takes a token from the
network's clean-token distribution p(x0 | x_t); unmasked positions never change. That is the
reference's `_ddpm_update`, drawn in two stages: which positions unmask (one uniform per masked
position), then a token for those positions only (one uniform each, inverse CDF). The grid
ends at s = 0, where the stay probability is 0, so the last step fills every remaining position
(the reference's final noise removal).

The cached sampler (the paper's ddpm_cache) runs the network only for rows whose tokens changed
since its last call and keeps, between calls, the clean-token distribution of the masked
positions alone. With a time-independent network the output of an unchanged row is the same at
every t, so both samplers make the same random draws and return the same tokens.

Unmasking by confidence (`unmask_schedule="threshold"`, Fast-dLLM's rule for LLaDA) leaves the
noise schedule's clock: each call draws a token for every masked position and commits all those
whose probability under the model reaches `confidence_threshold`, and at least the surest one of
each row, so a row is done in at most as many calls as it has masked positions, and in far fewer
where the model is sure of many positions at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from xlm.data.tokenizers import Tokenizer
from xlm.nn.config_checks import check_field_types, check_sampling_filters
from xlm.nn.sampling import filter_logits
from xlm.trace import StepHook, emit

from .metrics import blocks_to_ids_and_text
from .noise import NoiseSchedule
from .types import MdlmPredictBatch, MdlmPredictionDict

STRATEGIES = ("sample", "greedy")
UNMASK_SCHEDULES = ("ancestral", "threshold")


@dataclass(kw_only=True)
class MdlmSamplerConfig:
    max_new_tokens: int = 64  # size of the generated block (seq2seq) and default unconditional length
    # "ancestral": num_steps denoising steps from t = 1 to t = 0 (DDPM) | "threshold": each call commits every
    # masked position whose confidence reaches confidence_threshold, and at least the surest (Fast-dLLM)
    unmask_schedule: str = "ancestral"
    num_steps: int = 128  # ancestral: T, the denoising steps; threshold: a cap on calls (the last commits all left)
    confidence_threshold: float = 0.9  # for "threshold": the model's probability of the token drawn (> 1: one per call)
    strategy: str = "sample"  # "sample" (temperature, top_k, top_p apply) | "greedy" (argmax token)
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    # ancestral only: reuse the network output while a row is unchanged: valid for time-independent networks only;
    # None = wherever the model allows it (a time-conditioned one, e.g. converted from xlm-core, runs uncached)
    use_cache: bool | None = None

    def __post_init__(self) -> None:
        check_field_types(self, prefix="sampler.")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"sampler.strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.unmask_schedule not in UNMASK_SCHEDULES:
            raise ValueError(f"sampler.unmask_schedule must be one of {UNMASK_SCHEDULES}, got {self.unmask_schedule!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"sampler.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_steps < 1:
            raise ValueError(f"sampler.num_steps must be >= 1, got {self.num_steps}")
        check_sampling_filters(self)


class MdlmPredictor:
    """`model(input_ids, sigma, *, attention_mask, output_positions)` returns logits at
    `output_positions`; `model.time_conditioning` says whether they depend on sigma."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, config: MdlmSamplerConfig, *,
                 schedule: NoiseSchedule) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.schedule = schedule
        self.on_step: StepHook | None = None  # see xlm.trace
        if config.use_cache:
            self._check_cache_allowed()

    @property
    def _time_conditioned(self) -> bool:
        return bool(getattr(self.model, "time_conditioning", True))

    def _check_cache_allowed(self) -> None:
        if self._time_conditioned:
            raise ValueError("sampler.use_cache=true reuses the network's output across time steps, which is only "
                             "valid for a time-independent network, and this model is time-conditioned "
                             "(model.time_conditioning=true); set sampler.use_cache=false, or train with "
                             "model.time_conditioning=false")

    @property
    def _greedy(self) -> bool:
        return self.config.strategy == "greedy" or self.config.temperature == 0.0

    def _logits(self, x: Int[Tensor, "batch seq"], sigma: Float[Tensor, "batch"],
                attention_mask: Bool[Tensor, "batch seq"] | None, masked: Bool[Tensor, "batch seq"],
                rows: Bool[Tensor, "batch"] | None) -> Float[Tensor, "n vocab"]:
        """The network's logits at the masked positions of `rows` (all rows when None), row-major;
        [MASK] gets no mass (SUBS)."""
        if rows is not None:
            x, sigma, masked = x[rows], sigma[rows], masked[rows]
            attention_mask = None if attention_mask is None else attention_mask[rows]
        logits = self.model(x, sigma, attention_mask=attention_mask, output_positions=masked).float()
        logits[:, self.tokenizer.mask_token_id] = float("-inf")
        return logits

    def _draw_probs(self, logits: Float[Tensor, "n vocab"]) -> Float[Tensor, "n vocab"]:
        """The distribution tokens are drawn from: filters and temperature act on the logits."""
        if not self._greedy:
            cfg = self.config
            logits = filter_logits(logits / cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
        return logits.softmax(-1)

    def _draw(self, probs: Float[Tensor, "n vocab"], generator: torch.Generator | None) -> Int[Tensor, "n"]:
        """One token per row of `probs` by inverse CDF. Exactly one uniform per token, greedy
        included, so a seed gives the same unmasking order whatever the token strategy."""
        u = torch.rand(probs.size(0), 1, device=probs.device, generator=generator)
        if self._greedy:
            return probs.argmax(-1)
        cdf = probs.cumsum(-1)
        u = u * cdf[:, -1:]
        tokens = torch.searchsorted(cdf, u, right=True).squeeze(-1)
        # u * total can round up to total: fall back to the last token with mass
        last = probs.size(-1) - 1 - (probs.flip(-1) > 0).to(torch.int8).argmax(-1)
        return torch.minimum(tokens, last)

    @torch.no_grad()
    def generate(self, input_ids: Int[Tensor, "batch seq"], fill_mask: Bool[Tensor, "batch seq"] | None = None,
                 attention_mask: Bool[Tensor, "batch seq"] | None = None, *, num_steps: int | None = None,
                 use_cache: bool | None = None,
                 generator: torch.Generator | None = None) -> tuple[Int[Tensor, "batch seq"], Int[Tensor, " batch"]]:
        """Fill the `fill_mask` positions (default: where input_ids is [MASK]); every other
        position is kept. Unconditional, seq2seq (a suffix block) and infilling (any positions)
        are all this call with a different `fill_mask`. Returns the rows and each row's model
        calls: the calls that ran it while it still had a masked position (what it costs alone)."""
        cfg = self.config
        steps = cfg.num_steps if num_steps is None else num_steps
        if steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {steps}")
        device = next(self.model.parameters()).device
        mask_id = self.tokenizer.mask_token_id
        x = input_ids.to(device).clone()
        masked = (x == mask_id) if fill_mask is None else fill_mask.to(device=device, dtype=torch.bool).clone()
        if masked.shape != x.shape:
            raise ValueError(f"fill_mask must have the shape of input_ids {tuple(x.shape)}, got {tuple(masked.shape)}")
        if attention_mask is not None:
            attention_mask = attention_mask.to(device=device, dtype=torch.bool)
            if bool((masked & ~attention_mask).any()):
                raise ValueError("fill_mask marks padding positions (attention_mask False); only real positions "
                                 "can be generated")
        x[masked] = mask_id
        if cfg.unmask_schedule == "threshold":
            return x, self._unmask_by_confidence(x, masked, attention_mask, steps, generator)
        use_cache = cfg.use_cache if use_cache is None else use_cache
        if use_cache is None:
            use_cache = not self._time_conditioned
        elif use_cache:
            self._check_cache_allowed()
        return x, self._ancestral(x, masked, attention_mask, steps, use_cache, generator)

    def _ancestral(self, x: Int[Tensor, "batch seq"], masked: Bool[Tensor, "batch seq"],
                   attention_mask: Bool[Tensor, "batch seq"] | None, steps: int, use_cache: bool,
                   generator: torch.Generator | None) -> Int[Tensor, " batch"]:
        """`steps` DDPM steps on `x` in place, unmasking `masked`; each row's model calls."""
        device, batch = x.device, x.size(0)
        row_calls = torch.zeros(batch, dtype=torch.long, device=device)
        probs = torch.empty(0, device=device)  # cache: p(x0 | x_t) of the masked positions, row-major
        stale = masked.any(-1)  # rows whose cached distribution is out of date
        grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        move_chance = self.schedule.move_chance(grid)
        sigmas = self.schedule.sigma(grid).float()
        for i in range(steps):
            if not bool(masked.any()):
                break
            sigma = sigmas[i].to(device).expand(batch)
            if not use_cache:
                probs = self._draw_probs(self._logits(x, sigma, attention_mask, masked, None))
                row_calls += masked.any(-1)
            elif bool(stale.any()):
                fresh = self._draw_probs(self._logits(x, sigma, attention_mask, masked, stale))
                row_calls += stale
                if fresh.size(0) == int(masked.sum()):
                    probs = fresh
                else:
                    probs[stale[masked.nonzero()[:, 0]]] = fresh
            positions = masked.nonzero()
            stay = float(move_chance[i + 1] / move_chance[i])
            unmask = torch.rand(positions.size(0), device=device, generator=generator) >= stay
            stale = torch.zeros(batch, dtype=torch.bool, device=device)
            if bool(unmask.any()):
                rows, cols = positions[unmask].unbind(-1)
                x[rows, cols] = self._draw(probs[unmask], generator)
                masked[rows, cols] = False
                stale[rows] = True
                if self.on_step is not None:
                    written = torch.zeros_like(masked)
                    written[rows, cols] = True
                    emit(self.on_step, i, x, written)
                probs = probs[~unmask]
        return row_calls

    def _unmask_by_confidence(self, x: Int[Tensor, "batch seq"], masked: Bool[Tensor, "batch seq"],
                              attention_mask: Bool[Tensor, "batch seq"] | None, max_calls: int,
                              generator: torch.Generator | None) -> Int[Tensor, " batch"]:
        """Fast-dLLM's parallel unmasking on `x` in place; each row's model calls. Only rows with a
        masked position are run. A time-conditioned network sees, per row, the sigma at which the
        schedule masks the fraction of the row's block still masked: that fraction is what a
        training row at that sigma shows, and the schedule's clock means nothing here."""
        device, batch = x.device, x.size(0)
        row_calls = torch.zeros(batch, dtype=torch.long, device=device)
        block = masked.sum(-1).clamp(min=1)
        # sigma(1) is finite (noise_eps): a fully masked block is the schedule's t = 1
        top_fraction = float(self.schedule.move_chance(torch.tensor(1.0, dtype=torch.float64)))
        threshold = self.config.confidence_threshold
        for i in range(max_calls):
            rows = masked.any(-1)
            if not bool(rows.any()):
                break
            fraction = (masked.sum(-1) / block).clamp(max=top_fraction)
            sigma = -torch.log1p(-fraction.double()).float()
            logits = self._logits(x, sigma, attention_mask, masked, rows)
            row_calls += rows
            probs = logits.softmax(-1)  # the model's own: confidence is read before temperature and filters
            tokens = self._draw(probs if self._greedy else self._draw_probs(logits), generator)
            sure = probs.gather(1, tokens[:, None]).squeeze(1)
            scores = torch.full(x.shape, -1.0, device=device).masked_scatter(masked, sure)
            surest = torch.zeros_like(masked).scatter_(1, scores.argmax(-1, keepdim=True), True)
            chosen = masked & ((scores >= threshold) | surest) if i < max_calls - 1 else masked
            x[chosen] = tokens[chosen[masked]]
            masked &= ~chosen
            emit(self.on_step, i, x, chosen)
        return row_calls

    def unconditional(self, batch_size: int, length: int | None = None, *,
                      generator: torch.Generator | None = None) -> Int[Tensor, "batch seq"]:
        """`batch_size` rows of `length` tokens (default sampler.max_new_tokens), all generated."""
        length = self.config.max_new_tokens if length is None else length
        device = next(self.model.parameters()).device
        prior = torch.full((batch_size, length), self.tokenizer.mask_token_id, dtype=torch.long, device=device)
        return self.generate(prior, generator=generator)[0]

    def predict(self, batch: MdlmPredictBatch, *, generator: torch.Generator | None = None) -> MdlmPredictionDict:
        fill = batch["fill_mask"]
        sequences, row_calls = self.generate(batch["input_ids"], fill, batch["attention_mask"], generator=generator)
        blocks = sequences[fill.to(sequences.device)].view(sequences.size(0), -1)
        ids, text = blocks_to_ids_and_text(blocks.tolist(), self.tokenizer)
        return {"ids": ids, "text": text, "sequences": sequences, "start": sequences.size(1) - blocks.size(1),
                "row_calls": row_calls.tolist()}
