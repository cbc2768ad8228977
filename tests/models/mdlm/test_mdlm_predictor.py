import math

import pytest
import torch

import xlm
from xlm.data.tokenizers import WordTokenizer
from xlm.models.mdlm.collators import MdlmSeq2SeqCollator, MdlmSeq2SeqPredictCollator
from xlm.models.mdlm.noise import LogLinearSchedule
from xlm.models.mdlm.predictor import MdlmPredictor, MdlmSamplerConfig

TOK = WordTokenizer([f"w{i}" for i in range(12)])  # words from id 7
V = TOK.vocab_size
PAD, MASK, EOS, BOS = TOK.pad_token_id, TOK.mask_token_id, TOK.eos_token_id, TOK.bos_token_id
SCHEDULE = LogLinearSchedule(1e-3)


class Oracle(torch.nn.Module):
    """All mass on the true token. The truth of a row is looked up by its first real token (the
    samplers may run any subset of rows); rows with no real token yet get `default`."""

    def __init__(self, truths: dict[int, list[int]], default: list[int] | None = None,
                 time_conditioning: bool = False) -> None:
        super().__init__()
        self.truths, self.default = truths, default
        self.time_conditioning = time_conditioning
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # where the sampler finds the device
        self.sigmas: list[float] = []
        self.masked_counts: list[int] = []

    def forward(self, input_ids, sigma, *, attention_mask=None, output_positions=None):
        self.sigmas.append(float(sigma[0]))
        self.masked_counts.append(int((input_ids == MASK).sum()))
        truth = []
        for b, row in enumerate(input_ids.tolist()):
            first = int(attention_mask[b].int().argmax()) if attention_mask is not None else 0
            truth.append(self.truths.get(row[first], self.default))
        truth = torch.tensor(truth)
        logits = torch.full((*input_ids.shape, V), float("-inf")).scatter(-1, truth[..., None], 0.0)
        return logits if output_positions is None else logits[output_positions]


def _predictor(model, **config) -> MdlmPredictor:
    return MdlmPredictor(model, TOK, MdlmSamplerConfig(**config), schedule=SCHEDULE)


def _random_model(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = xlm.create_model("mdlm_tiny", vocab_size=V, **overrides).eval()
    with torch.no_grad():  # the zero-initialised modulation and output made random: outputs depend on the tokens
        for name, p in model.named_parameters():
            if "adaLN" in name or "output_layer.linear" in name:
                p.normal_(0.0, 0.1)
    return model


EXAMPLES = [{"prompt_ids": [7, 8, 9], "target_ids": [10, 11]},
            {"prompt_ids": [12, 7], "target_ids": [13, 14, 15]},
            {"prompt_ids": [14], "target_ids": []}]


@pytest.mark.parametrize("use_cache", [False, True])
@pytest.mark.parametrize("num_steps", [1, 7, 200])
def test_oracle_seq2seq_fills_the_block_exactly(use_cache, num_steps):
    truth_rows = MdlmSeq2SeqCollator(TOK, 64, block_size=5)(EXAMPLES)["input_ids"]
    batch = MdlmSeq2SeqPredictCollator(TOK, 64, block_size=5)(EXAMPLES)
    oracle = Oracle({ex["prompt_ids"][0]: row for ex, row in zip(EXAMPLES, truth_rows.tolist())})
    out = _predictor(oracle, use_cache=use_cache, num_steps=num_steps).predict(
        batch, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out["sequences"], truth_rows)
    assert out["ids"] == [ex["target_ids"] for ex in EXAMPLES]
    assert out["text"] == [TOK.decode(ex["target_ids"]) for ex in EXAMPLES]
    assert out["start"] == truth_rows.size(1) - 5


@pytest.mark.parametrize("use_cache", [False, True])
def test_oracle_unconditional_and_infilling_reproduce_the_target(use_cache):
    target = [7, 9, 11, 13, 15, 17, 8, 10]
    predictor = _predictor(Oracle({}, default=target), use_cache=use_cache, num_steps=30, max_new_tokens=8)
    rows = predictor.unconditional(4, generator=torch.Generator().manual_seed(0))
    assert rows.tolist() == [target] * 4

    full = torch.tensor([[7, 8, 9, 10, 11, 12, 13, 14], [15, 16, 17, 18, 7, 8, 9, 10]])
    fill = torch.tensor([[0, 1, 0, 1, 1, 0, 0, 1], [0, 0, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    oracle = Oracle({row[0]: row for row in full.tolist()})
    corrupted = full.masked_fill(fill, 0)  # whatever sits at a fill position is replaced by [MASK]
    infilled, _ = _predictor(oracle, use_cache=use_cache, num_steps=30).generate(
        corrupted, fill, generator=torch.Generator().manual_seed(0))
    assert torch.equal(infilled, full)
    # fill_mask defaults to the [MASK] positions
    assert torch.equal(_predictor(oracle, use_cache=use_cache).generate(full.masked_fill(fill, MASK))[0], full)


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.7, "top_k": 6, "top_p": 0.9}, {"strategy": "greedy"}],
                         ids=["t1", "filtered", "greedy"])
def test_cached_sampler_returns_the_uncached_tokens_with_fewer_forwards(sampling):
    model = _random_model()
    calls = {"rows": 0, "forwards": 0}

    def count(_module, args, _kwargs):
        calls["forwards"] += 1
        calls["rows"] += args[0].size(0)

    model.register_forward_pre_hook(count, with_kwargs=True)
    batch = MdlmSeq2SeqPredictCollator(TOK, 64, block_size=6)(EXAMPLES)
    results = {}
    for use_cache in (False, True):
        calls.update(rows=0, forwards=0)
        predictor = _predictor(model, use_cache=use_cache, num_steps=50, **sampling)
        seqs, row_calls = predictor.generate(batch["input_ids"], batch["fill_mask"], batch["attention_mask"],
                                             generator=torch.Generator().manual_seed(3))
        assert int(row_calls.sum()) == calls["rows"] or not use_cache  # uncached: rows run after their last unmasking
        results[use_cache] = (seqs, dict(calls))
    (plain, plain_calls), (cached, cached_calls) = results[False], results[True]
    assert torch.equal(plain, cached)
    assert not bool((cached == MASK).any())
    assert plain_calls["forwards"] == 50
    assert cached_calls["forwards"] < 50 and cached_calls["rows"] <= 3 * 6  # at most one refresh per unmasking
    # the uncached draws really depend on the network: another seed gives other tokens
    other, _ = _predictor(model, use_cache=False, num_steps=50, **sampling).generate(
        batch["input_ids"], batch["fill_mask"], batch["attention_mask"], generator=torch.Generator().manual_seed(4))
    assert not torch.equal(other, plain) or sampling.get("strategy") == "greedy"


def test_cached_equals_uncached_unconditionally_on_a_longer_block():
    model = _random_model(seed=1)
    outs = [_predictor(model, use_cache=c, num_steps=100).unconditional(
                3, 24, generator=torch.Generator().manual_seed(0))
            for c in (False, True)]
    assert torch.equal(outs[0], outs[1])


def test_caching_a_time_conditioned_model_is_refused():
    model = _random_model(time_conditioning=True)
    with pytest.raises(ValueError, match="sampler.use_cache=false"):
        _predictor(model, use_cache=True)
    predictor = _predictor(model, use_cache=False, num_steps=5)
    with pytest.raises(ValueError, match="time-conditioned"):
        predictor.generate(torch.full((1, 4), MASK), use_cache=True)
    assert not bool((predictor.unconditional(2, 6) == MASK).any())


def test_by_default_the_cache_is_used_wherever_the_model_allows_it():
    conditioned = _predictor(_random_model(time_conditioning=True), num_steps=5)  # e.g. converted from xlm-core
    assert not bool((conditioned.unconditional(2, 6) == MASK).any())
    independent = _random_model(time_conditioning=False)
    calls = []
    independent.register_forward_hook(lambda *_: calls.append(1))
    seed = torch.Generator().manual_seed
    _predictor(independent, num_steps=50).unconditional(1, 4, generator=seed(0))
    cached_calls, calls[:] = len(calls), []
    _predictor(independent, num_steps=50, use_cache=False).unconditional(1, 4, generator=seed(0))
    assert cached_calls < len(calls)


def test_steps_walk_sigma_from_t1_down_and_unmask_at_the_schedule_rate():
    """A time-conditioned network sees sigma(1 - i/T) at step i; the expected number of masked
    positions entering step i is N * mc(1 - i/T) / mc(1) = N (1 - i/T) for the log-linear schedule."""
    n, steps = 4000, 8
    oracle = Oracle({}, default=[7] * n, time_conditioning=True)
    _predictor(oracle, use_cache=False, num_steps=steps).unconditional(1, n, generator=torch.Generator().manual_seed(0))
    grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)[:-1]
    assert oracle.sigmas == pytest.approx(SCHEDULE.sigma(grid).tolist(), rel=1e-6)
    for i, count in enumerate(oracle.masked_counts):
        p = 1 - i / steps
        assert abs(count - n * p) < 5 * math.sqrt(n * p * (1 - p)) + 1e-9, (i, count)


def test_temperature_and_top_k_act_on_the_logits():
    logits = torch.tensor([0.0, 1.0, 2.0, 3.0])
    words = torch.arange(7, 11)

    class Fixed(torch.nn.Module):
        time_conditioning = False

        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(()))

        def forward(self, input_ids, sigma, *, attention_mask=None, output_positions=None):
            out = torch.full((*input_ids.shape, V), -1e4)
            out[..., words] = logits
            out[..., MASK] = 50.0  # SUBS: [MASK] gets no mass whatever the network says
            return out[output_positions]

    rows = _predictor(Fixed(), temperature=0.5, top_k=3, num_steps=2).unconditional(
        20000, 1, generator=torch.Generator().manual_seed(0))[:, 0]
    expected = torch.softmax(torch.tensor([2.0, 4.0, 6.0]), 0)  # top 3 of logits / 0.5
    counts = torch.stack([(rows == w).float().mean() for w in words[1:]])
    assert int((rows == words[0]).sum()) == 0 and int((rows == MASK).sum()) == 0
    torch.testing.assert_close(counts, expected, atol=0.012, rtol=0)


def test_sampler_config_errors_say_what_is_allowed():
    with pytest.raises(ValueError, match="sampler.strategy"):
        MdlmSamplerConfig(strategy="beam")
    with pytest.raises(ValueError, match="sampler.num_steps"):
        MdlmSamplerConfig(num_steps=0)
    with pytest.raises(ValueError, match="padding positions"):
        _predictor(Oracle({}, default=[7, 7])).generate(torch.full((1, 2), MASK),
                                                        attention_mask=torch.tensor([[False, True]]))


# ----------------------------------------------------------------- unmasking by confidence


class Graded(Oracle):
    """The true token at each position with logit `certainty` (the rest 0), so p(true) grows with it;
    rows are found by their first real token, as in Oracle, and otherwise under the key None."""

    def __init__(self, truths: dict[int, list[int]], certainty: dict[int, list[float]], **kwargs) -> None:
        super().__init__(truths, **kwargs)
        self.certainty = certainty
        self.inputs: list[torch.Tensor] = []

    def forward(self, input_ids, sigma, *, attention_mask=None, output_positions=None):
        self.inputs.append(input_ids.clone())
        self.sigmas.extend(sigma.tolist())
        truth, certainty = [], []
        for b, row in enumerate(input_ids.tolist()):
            first = int(attention_mask[b].int().argmax()) if attention_mask is not None else 0
            key = row[first] if row[first] in self.truths else None
            truth.append(self.truths[key])
            certainty.append(self.certainty[key])
        logits = torch.zeros(*input_ids.shape, V).scatter(-1, torch.tensor(truth)[..., None],
                                                          torch.tensor(certainty)[..., None])
        return logits[output_positions]


def _threshold(model, threshold, **config) -> MdlmPredictor:
    return _predictor(model, unmask_schedule="threshold", confidence_threshold=threshold, **config)


def _committed_per_call(model: Graded, final: torch.Tensor, row: int = 0) -> list[list[int]]:
    """For one row present in every call: the columns each call unmasked."""
    states = [x[row] for x in model.inputs] + [final[row]]
    return [((a == MASK) & (b != MASK)).nonzero().flatten().tolist() for a, b in zip(states, states[1:])]


def _seq2seq(block: int = 5):
    truth_rows = MdlmSeq2SeqCollator(TOK, 64, block_size=block)(EXAMPLES)["input_ids"]
    batch = MdlmSeq2SeqPredictCollator(TOK, 64, block_size=block)(EXAMPLES)
    keys = [ex["prompt_ids"][0] for ex in EXAMPLES]
    return batch, truth_rows, keys


@pytest.mark.parametrize("sampling", [{"strategy": "greedy"}, {}, {"temperature": 0.5, "top_k": 2}],
                         ids=["greedy", "sample", "filtered"])
def test_threshold_zero_fills_the_whole_block_in_one_call(sampling):
    batch, truth_rows, keys = _seq2seq()
    certainty = [float(c) for c in range(truth_rows.size(1))]
    model = Graded(dict(zip(keys, truth_rows.tolist())), {k: [30.0] * truth_rows.size(1) for k in keys})
    out = _threshold(model, 0.0, **sampling).predict(batch, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out["sequences"], truth_rows) and out["row_calls"] == [1, 1, 1] and len(model.inputs) == 1
    assert out["ids"] == [ex["target_ids"] for ex in EXAMPLES]
    # however unsure the model is: everything is committed in that one call
    model = Graded(dict(zip(keys, truth_rows.tolist())), {k: certainty for k in keys})
    out = _threshold(model, 0.0, **sampling).predict(batch, generator=torch.Generator().manual_seed(0))
    assert out["row_calls"] == [1, 1, 1] and not bool((out["sequences"] == MASK).any())


def test_threshold_above_one_commits_one_position_per_call_surest_first():
    batch, truth_rows, keys = _seq2seq(block=5)
    width = truth_rows.size(1)
    # the block is the last 5 columns; its certainties are a permutation, the prompt's are higher still
    block_certainty = [3.0, 9.0, 1.0, 7.0, 5.0]
    certainty = {k: [20.0] * (width - 5) + block_certainty for k in keys}
    model = Graded(dict(zip(keys, truth_rows.tolist())), certainty)
    out = _threshold(model, 1.5, strategy="greedy").predict(batch)
    assert torch.equal(out["sequences"], truth_rows)
    assert out["row_calls"] == [5, 5, 5] and len(model.inputs) == 5
    order = [cols[0] - (width - 5) for cols in _committed_per_call(model, out["sequences"])]
    assert order == [1, 3, 4, 0, 2]  # by certainty: 9, 7, 5, 3, 1
    assert all(len(cols) == 1 for cols in _committed_per_call(model, out["sequences"]))
    for x in model.inputs:  # the prompt and [BOS] are never touched
        assert torch.equal(x[:, : width - 5], batch["input_ids"][:, : width - 5])


def test_threshold_commits_every_sure_position_and_at_least_the_surest():
    truth = [7, 8, 9, 10, 11, 12]
    # p(true) with 13 zero logits beside it: 20 -> ~1.0, 4 -> ~0.8, 2 -> ~0.36, 1 -> ~0.17
    certainty = [20.0, 1.0, 20.0, 2.0, 4.0, 1.0]
    model = Graded({None: truth}, {None: certainty})
    x = torch.full((1, 6), MASK)
    out, calls = _threshold(model, 0.9, strategy="greedy").generate(x)
    assert out.tolist() == [truth]
    assert _committed_per_call(model, out) == [[0, 2], [4], [3], [1], [5]] and calls.tolist() == [5]
    # a budget of calls: the last one commits whatever is left
    model = Graded({None: truth}, {None: certainty})
    out, calls = _threshold(model, 0.9, strategy="greedy", num_steps=2).generate(x)
    assert out.tolist() == [truth] and _committed_per_call(model, out) == [[0, 2], [1, 3, 4, 5]]


def test_threshold_runs_only_rows_left_to_fill_and_counts_each_rows_calls():
    full = torch.tensor([[7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18], [8, 8, 8, 8, 8, 8]])
    fill = torch.tensor([[0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    model = Graded({row[0]: row for row in full.tolist()}, {row[0]: [1.0] * 6 for row in full.tolist()})
    out, calls = _threshold(model, 1.5, strategy="greedy").generate(full.masked_fill(fill, MASK), fill)
    assert torch.equal(out, full) and calls.tolist() == [5, 2, 0]
    assert [x.size(0) for x in model.inputs] == [2, 2, 1, 1, 1]
    assert all(bool((x[:, 0] == full[: x.size(0), 0]).all()) for x in model.inputs)  # unfilled columns kept


def test_threshold_shows_a_time_conditioned_model_the_sigma_of_its_masked_fraction():
    """Per row: the fraction f of its block still masked, as sigma = -log(1 - f), capped at sigma(1)."""
    n = 4
    model = Graded({None: [7] * n}, {None: [1.0] * n}, time_conditioning=True)
    _threshold(model, 1.5).unconditional(1, n, generator=torch.Generator().manual_seed(0))
    expected = [float(SCHEDULE.sigma(torch.tensor(1.0)))] + [-math.log(1 - (n - i) / n) for i in range(1, n)]
    assert model.sigmas == pytest.approx(expected, rel=1e-5)


def test_threshold_sampling_draws_from_the_filtered_distribution():
    """Tokens come from temperature / top-k as in ancestral sampling; the threshold reads the model's own
    probability of the drawn token."""
    logits = torch.tensor([0.0, 1.0, 2.0, 3.0])
    words = torch.arange(7, 11)

    class Fixed(torch.nn.Module):
        time_conditioning = False

        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(()))

        def forward(self, input_ids, sigma, *, attention_mask=None, output_positions=None):
            out = torch.full((*input_ids.shape, V), -1e4)
            out[..., words] = logits
            return out[output_positions]

    rows, calls = _threshold(Fixed(), 0.0, temperature=0.5, top_k=3).generate(
        torch.full((20000, 1), MASK), generator=torch.Generator().manual_seed(0))
    expected = torch.softmax(torch.tensor([2.0, 4.0, 6.0]), 0)
    counts = torch.stack([(rows[:, 0] == w).float().mean() for w in words[1:]])
    assert int((rows == words[0]).sum()) == 0 and bool((calls == 1).all())
    torch.testing.assert_close(counts, expected, atol=0.012, rtol=0)
    # p(10) = 0.64 under the model, the rest less: at 0.6 only a 10 is sure, so two positions take two calls
    # unless both drew a 10
    rows, calls = _threshold(Fixed(), 0.6, strategy="greedy").generate(torch.full((1, 2), MASK))
    assert rows.tolist() == [[10, 10]] and calls.tolist() == [1]
    rows, calls = _threshold(Fixed(), 0.7, strategy="greedy").generate(torch.full((1, 2), MASK))
    assert rows.tolist() == [[10, 10]] and calls.tolist() == [2]


def test_unmask_schedule_must_be_known():
    with pytest.raises(ValueError, match="sampler.unmask_schedule must be one of"):
        MdlmSamplerConfig(unmask_schedule="confidence")
