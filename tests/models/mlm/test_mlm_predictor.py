import dataclasses
import itertools

import pytest
import torch

from xlm.data.tokenizers import WordTokenizer
from xlm.models.mlm.collators import MlmPredictCollator, MlmSeq2SeqCollator
from xlm.models.mlm.predictor import MlmPredictor, MlmSamplerConfig, confidence, count_schedule

TOK = WordTokenizer([str(i) for i in range(10)])  # "0" -> 7, ..., "9" -> 16
V = TOK.vocab_size
BOS, EOS, PAD, MASK = TOK.bos_token_id, TOK.eos_token_id, TOK.pad_token_id, TOK.mask_token_id


class Oracle(torch.nn.Module):
    """Puts `certainty` more logit on the true token than on any other; records each call's input."""

    def __init__(self, truth: torch.Tensor, certainty: torch.Tensor | float = 30.0) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # the predictor reads the device from parameters
        self.truth = truth
        self.certainty = torch.as_tensor(certainty, dtype=torch.float).expand(truth.shape)
        self.inputs: list[torch.Tensor] = []

    def forward(self, input_ids, attention_mask=None, output_positions=None, **_):
        self.inputs.append(input_ids.clone())
        logits = torch.zeros(*self.truth.shape, V).scatter(2, self.truth[..., None], self.certainty[..., None])
        return logits if output_positions is None else logits[output_positions]

    def unmasked_per_call(self) -> list[list[int]]:
        counts = [(x == MASK).sum(dim=1) for x in self.inputs] + [torch.zeros(self.truth.size(0), dtype=torch.long)]
        return [(a - b).tolist() for a, b in zip(counts, counts[1:])]


SCHEDULES = [(sel, sched) for sel, sched in itertools.product(("random", "top_prob", "prob_margin", "neg_entropy"),
                                                              ("count", "threshold"))
             if not (sel == "random" and sched == "threshold")]
TOKEN_CHOICES = [dict(strategy="greedy"), dict(strategy="sample"), dict(strategy="sample", temperature=0.5),
                 dict(strategy="sample", top_k=3), dict(strategy="sample", top_p=0.9)]
EXAMPLES = [{"prompt_ids": [7, 8, 9, 10], "target_ids": [11, 12, 13, 14]},
            {"prompt_ids": [15], "target_ids": [16, 7]},
            {"prompt_ids": [8, 8], "target_ids": [9, 10, 11, 12, 13]}]


def seq2seq_case(block: int = 7):
    """A short block holds the examples' targets cut to fit it, with their [EOS]."""
    fitting = [{**ex, "target_ids": ex["target_ids"][: block - 1]} for ex in EXAMPLES]
    truth = MlmSeq2SeqCollator(TOK, block_size=block, max_len=64)(fitting)["target_ids"]
    return MlmPredictCollator(TOK, block_size=block, max_len=64)(EXAMPLES), truth


def unconditional_case(block: int = 6):
    truth = torch.tensor([[7, 8, 9, EOS, PAD, PAD], [9, 9, 8, 7, 8, EOS]])
    return MlmPredictCollator(TOK, block_size=block, max_len=64)([{}, {}]), truth


@pytest.mark.parametrize("mode", ["seq2seq", "unconditional"])
@pytest.mark.parametrize("selection, schedule", SCHEDULES)
@pytest.mark.parametrize("num_steps", [None, 3])
def test_oracle_is_reproduced_exactly(mode, selection, schedule, num_steps):
    batch, truth = seq2seq_case() if mode == "seq2seq" else unconditional_case()
    for tokens in TOKEN_CHOICES:
        cfg = MlmSamplerConfig(max_new_tokens=7, num_steps=num_steps, position_selection=selection,
                               unmask_schedule=schedule, confidence_threshold=0.99 if selection == "top_prob" else -1.0,
                               **tokens)
        model = Oracle(truth)
        out = MlmPredictor(model, TOK, cfg).predict(batch, generator=torch.Generator().manual_seed(0))
        assert torch.equal(out["sequences"], truth), (tokens, out["sequences"])
        if mode == "seq2seq":
            assert out["ids"] == [ex["target_ids"] for ex in EXAMPLES]
            assert out["text"] == [TOK.decode(ex["target_ids"]) for ex in EXAMPLES]
        else:
            assert out["ids"] == [[7, 8, 9], [9, 9, 8, 7, 8]]
        assert out["num_model_calls"] == len(model.inputs) == max(out["row_calls"]) <= (num_steps or 7)


def test_count_schedule_spreads_evenly():
    assert count_schedule(torch.tensor([9, 4, 0, 2]), 4).tolist() == [[2, 2, 2, 3], [1, 1, 1, 1], [0, 0, 0, 0],
                                                                     [0, 1, 0, 1]]
    sched = count_schedule(torch.tensor([7, 30]), 5)
    assert sched.sum(dim=1).tolist() == [7, 30]
    assert (sched.max(dim=1).values - sched.min(dim=1).values).tolist() == [1, 0]


@pytest.mark.parametrize("selection", ["random", "top_prob", "neg_entropy"])
def test_count_per_step_unmasks_exactly_the_scheduled_number(selection):
    truth = torch.randint(7, 17, (2, 12), generator=torch.Generator().manual_seed(0))
    x = truth.clone()
    x[0, 1:10] = MASK  # 9 masked
    x[1, [0, 4, 8, 11]] = MASK  # 4 masked
    cfg = MlmSamplerConfig(max_new_tokens=12, num_steps=4, position_selection=selection)
    model = Oracle(truth)
    out, calls = MlmPredictor(model, TOK, cfg).generate(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, truth) and calls.tolist() == [4, 4]
    assert model.unmasked_per_call() == [[2, 1], [2, 1], [2, 1], [3, 1]]

    # a budget above the block: steps with nothing scheduled cost no model call
    model = Oracle(truth)
    cfg = MlmSamplerConfig(max_new_tokens=12, num_steps=20, position_selection=selection)
    out, calls = MlmPredictor(model, TOK, cfg).generate(x)
    assert torch.equal(out, truth) and int(calls.max()) == len(model.inputs)
    assert all(max(step) == 1 for step in model.unmasked_per_call())
    assert [sum(col) for col in zip(*model.unmasked_per_call())] == [9, 4]


@pytest.mark.parametrize("selection", ["top_prob", "prob_margin", "neg_entropy"])
def test_confidence_picks_the_surest_positions_first(selection):
    truth = torch.tensor([[7, 8, 9, 10, 11, 12]])
    certainty = torch.tensor([[1.0, 6.0, 2.0, 5.0, 3.0, 4.0]])
    x = torch.full_like(truth, MASK)
    model = Oracle(truth, certainty)
    cfg = MlmSamplerConfig(max_new_tokens=6, num_steps=3, position_selection=selection)
    out, _ = MlmPredictor(model, TOK, cfg).generate(x)
    assert torch.equal(out, truth)
    committed = [(a == MASK) & (b != MASK) for a, b in zip(model.inputs, model.inputs[1:] + [out])]
    assert [c[0].nonzero().flatten().tolist() for c in committed] == [[1, 3], [4, 5], [0, 2]]


def test_random_selection_ignores_confidence():
    truth = torch.arange(7, 17)[None]
    certainty = torch.linspace(1.0, 10.0, 10)[None]
    orders = set()
    for seed in range(3):
        model = Oracle(truth, certainty)
        cfg = MlmSamplerConfig(max_new_tokens=10, position_selection="random")
        out, _ = MlmPredictor(model, TOK, cfg).generate(torch.full_like(truth, MASK),
                                                        generator=torch.Generator().manual_seed(seed))
        assert torch.equal(out, truth)
        orders.add(tuple(int((a != b).nonzero()[0, 1]) for a, b in zip(model.inputs, model.inputs[1:] + [out])))
    assert len(orders) > 1 and tuple(range(9, -1, -1)) not in orders


def test_threshold_commits_every_sure_position_and_at_least_one():
    truth = torch.tensor([[7, 8, 9, 10, 11, 12]])
    certainty = torch.tensor([[10.0, 1.0, 10.0, 1.0, 1.5, 1.0]])  # p(true) ~ 0.999 or < 0.3
    x = torch.full_like(truth, MASK)
    cfg = MlmSamplerConfig(max_new_tokens=6, position_selection="top_prob", unmask_schedule="threshold",
                           confidence_threshold=0.9)
    model = Oracle(truth, certainty)
    out, calls = MlmPredictor(model, TOK, cfg).generate(x)
    assert torch.equal(out, truth)
    assert model.unmasked_per_call() == [[2], [1], [1], [1], [1]]
    assert (model.inputs[2] != MASK)[0].tolist() == [True, False, True, False, True, False]  # the surest next
    # with a budget of 3 steps the last step commits whatever is left
    model = Oracle(truth, certainty)
    out, calls = MlmPredictor(model, TOK, dataclasses.replace(cfg, num_steps=3)).generate(x)
    assert torch.equal(out, truth) and model.unmasked_per_call() == [[2], [1], [3]]


@pytest.mark.parametrize("tokens", TOKEN_CHOICES[:2], ids=["greedy", "sample"])
def test_threshold_zero_fills_the_whole_block_in_one_call(tokens):
    batch, truth = seq2seq_case()
    cfg = MlmSamplerConfig(max_new_tokens=7, unmask_schedule="threshold", confidence_threshold=0.0, **tokens)
    model = Oracle(truth, certainty=0.5)  # unsure everywhere: p(true) ~ 0.1
    out = MlmPredictor(model, TOK, cfg).predict(batch, generator=torch.Generator().manual_seed(0))
    assert out["num_model_calls"] == 1 and out["row_calls"] == [1, 1, 1]
    assert not bool((out["sequences"] == MASK).any())
    assert torch.equal(out["sequences"][:, : batch["block_start"]], batch["input_ids"][:, : batch["block_start"]])


def test_threshold_above_one_commits_one_position_per_call_surest_first():
    batch, truth = seq2seq_case(block=7)
    start = batch["block_start"]
    certainty = torch.full(truth.shape, 20.0)
    certainty[:, start:] = torch.tensor([3.0, 9.0, 1.0, 7.0, 5.0, 2.0, 8.0])
    cfg = MlmSamplerConfig(max_new_tokens=7, unmask_schedule="threshold", confidence_threshold=1.5)
    model = Oracle(truth, certainty)
    out = MlmPredictor(model, TOK, cfg).predict(batch)
    assert torch.equal(out["sequences"], truth) and out["row_calls"] == [7, 7, 7]
    assert model.unmasked_per_call() == [[1, 1, 1]] * 7
    states = [x[0] for x in model.inputs] + [out["sequences"][0]]
    order = [int(((a == MASK) & (b != MASK)).nonzero()) - start for a, b in zip(states, states[1:])]
    assert order == [1, 6, 3, 4, 0, 5, 2]  # by certainty: 9, 8, 7, 5, 3, 2, 1
    for x in model.inputs:  # the prompt is never touched
        assert torch.equal(x[:, :start], batch["input_ids"][:, :start])


def test_stops_when_nothing_is_masked():
    truth = torch.tensor([[7, 8, 9, EOS]])
    model = Oracle(truth)
    cfg = MlmSamplerConfig(max_new_tokens=4, num_steps=10, position_selection="top_prob",
                           unmask_schedule="threshold")
    out, calls = MlmPredictor(model, TOK, cfg).generate(torch.full_like(truth, MASK))
    assert torch.equal(out, truth) and calls.tolist() == [1]
    for budget in (None, 10):
        cfg = MlmSamplerConfig(max_new_tokens=4, num_steps=budget)
        out, calls = MlmPredictor(model, TOK, cfg).generate(truth)
        assert torch.equal(out, truth) and calls.tolist() == [0]


def test_never_predicts_mask_nor_pad_in_the_prompt():
    batch, truth = seq2seq_case(block=3)
    x = batch["input_ids"].clone()
    x[0, 1] = MASK  # a masked prompt token (infilling)
    adversary = Oracle(truth, certainty=30.0)
    base = adversary.forward

    def forward(input_ids, **kwargs):
        logits = base(input_ids, **kwargs)
        logits[..., MASK] = 100.0
        logits[..., PAD] = 50.0
        return logits

    adversary.forward = forward
    for tokens in TOKEN_CHOICES:
        out, _ = MlmPredictor(adversary, TOK, MlmSamplerConfig(max_new_tokens=3, **tokens)).generate(
            x, batch["attention_mask"], block_start=batch["block_start"])
        assert out[0, 1] == truth[0, 1]  # the prompt position gets the best token that is not [PAD]/[MASK]
        assert (out[:, batch["block_start"]:] == PAD).all()  # inside the block [PAD] is allowed
        assert not (out == MASK).any()


def test_confidence_kinds():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2]]))
    assert torch.allclose(confidence(logits, "top_prob"), torch.tensor([0.7, 0.4]))
    assert torch.allclose(confidence(logits, "prob_margin"), torch.tensor([0.5, 0.0]), atol=1e-6)
    entropy = -(logits.exp() * logits).sum(dim=1)
    assert torch.allclose(confidence(logits, "neg_entropy"), -entropy)
    one_hot = torch.tensor([[0.0, float("-inf"), float("-inf")]])
    assert confidence(one_hot, "neg_entropy").item() == 0.0  # no NaN from 0 * log 0


@pytest.mark.parametrize("overrides, message", [
    (dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
    (dict(num_steps=0), "num_steps must be >= 1 or null"),
    (dict(position_selection="entropy"), "position_selection must be one of"),
    (dict(unmask_schedule="cosine"), "unmask_schedule must be one of"),
    (dict(strategy="beam"), "strategy must be one of"),
    (dict(position_selection="random", unmask_schedule="threshold"), "needs a confidence to threshold"),
    (dict(temperature=-1.0), "temperature must be >= 0"),
    (dict(top_p=0.0), "top_p must be in"),
    (dict(top_k=0), "top_k must be >= 1"),
])
def test_sampler_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        MlmSamplerConfig(**overrides)
