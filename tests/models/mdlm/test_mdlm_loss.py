import math

import pytest
import torch

import xlm
from xlm.data.tokenizers import WordTokenizer
from xlm.models.mdlm.collators import MdlmLMCollator, MdlmSeq2SeqCollator, MdlmSeq2SeqPredictCollator
from xlm.models.mdlm.loss import mdlm_loss
from xlm.models.mdlm.noise import CosineSchedule, LogLinearSchedule, sample_t
from xlm.models.mdlm.predictor import MdlmSamplerConfig
from xlm.models.mdlm.unit import MdlmUnit

TOK = WordTokenizer(["a", "b", "c"])  # a=7 b=8 c=9
V = TOK.vocab_size
PAD, MASK, EOS, BOS = TOK.pad_token_id, TOK.mask_token_id, TOK.eos_token_id, TOK.bos_token_id
EPS = 1e-3


class PositionLogits(torch.nn.Module):
    """Logits that depend on the position and on sigma, never on the tokens: base[l] + sigma * slope[l]."""

    time_conditioning = True

    def __init__(self, base: torch.Tensor, slope: torch.Tensor | None = None) -> None:
        super().__init__()
        self.base = torch.nn.Parameter(base)
        self.slope = torch.nn.Parameter(torch.zeros_like(base) if slope is None else slope)

    def forward(self, input_ids, sigma, *, attention_mask=None, output_positions=None):
        batch, seq = input_ids.shape
        logits = self.base[:seq] + sigma[:, None, None] * self.slope[:seq]
        return logits if output_positions is None else logits[output_positions]


def _subs_nll(row_logits: list[float], target: int) -> float:
    """-log softmax over every token but [MASK], by hand."""
    denom = sum(math.exp(v) for i, v in enumerate(row_logits) if i != MASK)
    return -(row_logits[target] - math.log(denom))


def test_collators_lay_out_prompt_bos_and_the_sampler_block():
    train = MdlmSeq2SeqCollator(TOK, 32, block_size=4)([{"prompt_ids": [7, 8], "target_ids": [9]},
                                                         {"prompt_ids": [7], "target_ids": [8, 9]}])
    assert train["input_ids"].tolist() == [[7, 8, BOS, 9, EOS, PAD, PAD], [PAD, 7, BOS, 8, 9, EOS, PAD]]
    assert train["attention_mask"].tolist() == [[True] * 7, [False] + [True] * 6]  # the block's [PAD]s are real
    assert train["noise_mask"].tolist() == [[False] * 3 + [True] * 4] * 2
    predict = MdlmSeq2SeqPredictCollator(TOK, 32, block_size=4)([{"prompt_ids": [7], "target_ids": [8]}])
    assert predict["input_ids"].tolist() == [[7, BOS, MASK, MASK, MASK, MASK]]
    assert predict["fill_mask"].tolist() == [[False, False, True, True, True, True]]
    assert predict["target_ids"] == [[8]]
    with pytest.raises(ValueError, match="sampler.max_new_tokens=4"):
        MdlmSeq2SeqCollator(TOK, 32, block_size=3)([{"prompt_ids": [7], "target_ids": [8, 9, 7]}])
    lm = MdlmLMCollator(TOK, 32)([{"input_ids": [BOS, 7, 8, EOS]}, {"input_ids": [9]}])
    assert lm["input_ids"].tolist() == [[BOS, 7, 8, EOS], [9, PAD, PAD, PAD]]
    assert lm["noise_mask"].tolist() == lm["attention_mask"].tolist() == [[True] * 4, [True] + [False] * 3]


def test_schedules_weight_and_masking_probability():
    t = torch.linspace(0.01, 1.0, 50, dtype=torch.float64)
    loglinear = LogLinearSchedule(EPS)
    torch.testing.assert_close(loglinear.move_chance(t), (1 - EPS) * t)
    torch.testing.assert_close(loglinear.loss_weight(t), 1 / t)  # dsigma / expm1(sigma) = 1/t
    for schedule in (loglinear, CosineSchedule(EPS)):
        h = 1e-6
        numeric = (schedule.sigma(t + h) - schedule.sigma(t - h)) / (2 * h)
        torch.testing.assert_close(schedule.dsigma(t[:-1]), numeric[:-1], rtol=1e-5, atol=1e-6)
        assert float(schedule.move_chance(torch.tensor(0.0, dtype=torch.float64))) == 0.0
        assert float(schedule.move_chance(torch.tensor(1.0, dtype=torch.float64))) < 1.0


def test_antithetic_t_puts_one_draw_in_each_stratum():
    g = torch.Generator().manual_seed(0)
    t = sample_t(8, sampling_eps=EPS, antithetic=True, generator=g)
    u = (t - EPS) / (1 - EPS)
    assert torch.equal(torch.floor(u * 8), torch.arange(8, dtype=u.dtype))
    plain = sample_t(1000, sampling_eps=EPS, antithetic=False, generator=g)
    assert float(plain.min()) >= EPS and float(plain.max()) < 1.0


def test_loss_matches_hand_computation():
    torch.manual_seed(0)
    base = torch.randn(5, V)
    batch = MdlmSeq2SeqCollator(TOK, 16, block_size=3)([{"prompt_ids": [7], "target_ids": [8]},
                                                         {"prompt_ids": [9], "target_ids": [7, 9]}])
    # rows: [a BOS b EOS PAD] and [c BOS a c EOS]; the block is the last 3 columns
    masked = torch.tensor([[True, False, True, False, True],   # the prompt entry is ignored: not in the block
                           [False, False, True, True, False]])
    t = torch.tensor([0.25, 0.5])
    out = mdlm_loss(PositionLogits(base), batch, schedule=LogLinearSchedule(EPS), mask_token_id=MASK,
                    sampling_eps=EPS, antithetic=True, t=t, masked=masked)

    def weight(tt: float) -> float:  # sigma'(t) / expm1(sigma(t)) for sigma = -log(1 - (1 - eps) t)
        sigma = -math.log(1 - (1 - EPS) * tt)
        return ((1 - EPS) / (1 - (1 - EPS) * tt)) / math.expm1(sigma)

    rows = base.tolist()
    expected_sum = (weight(0.25) * (_subs_nll(rows[2], 8) + _subs_nll(rows[4], PAD))
                    + weight(0.5) * (_subs_nll(rows[2], 7) + _subs_nll(rows[3], 9)))
    assert out["num_tokens"].item() == 6  # every block position, masked or not
    assert out["num_masked"].item() == 4
    assert out["nll_sum"].item() == pytest.approx(expected_sum, rel=1e-5)
    assert out["loss"].item() == pytest.approx(expected_sum / 6, rel=1e-5)
    assert weight(0.25) == pytest.approx(4.0) and weight(0.5) == pytest.approx(2.0)


@pytest.mark.parametrize("schedule", [LogLinearSchedule(EPS), CosineSchedule(EPS)], ids=["loglinear", "cosine"])
def test_nelbo_estimate_is_unbiased(schedule):
    """Mean of the estimator over many (t, mask) draws == a 2000-point midpoint rule over t of its
    exact expectation over masks. Logits that ignore the tokens make that expectation analytic:
    E_mask = (1 - exp(-sigma)) * sigma' / (exp(sigma) - 1) * sum_l nll_l(sigma(t)) / L."""
    torch.manual_seed(0)
    seq = 6
    model = PositionLogits(torch.randn(seq, V), 0.3 * torch.randn(seq, V))
    x0 = torch.randint(7, V, (seq,))

    def expected_given_t(t: torch.Tensor) -> torch.Tensor:
        """Only sigma(t) comes from the schedule: its derivative is taken numerically here."""
        sigma = schedule.sigma(t)
        dsigma = (schedule.sigma(t + 1e-7) - schedule.sigma(t - 1e-7)) / 2e-7
        logits = (model.base[None] + sigma[:, None, None] * model.slope[None]).double()
        logits[..., MASK] = float("-inf")
        nll = -logits.log_softmax(-1)[:, torch.arange(seq), x0].sum(-1)
        return (1 - torch.exp(-sigma)) * dsigma / (torch.exp(sigma) - 1) * nll / seq

    with torch.no_grad():
        u = (torch.arange(2000, dtype=torch.float64) + 0.5) / 2000
        exact = float(expected_given_t((1 - EPS) * u + EPS).mean())

        rows = 4000
        batch = {"input_ids": x0.expand(rows, seq), "attention_mask": torch.ones(rows, seq, dtype=torch.bool),
                 "noise_mask": torch.ones(rows, seq, dtype=torch.bool)}
        g = torch.Generator().manual_seed(1)
        draws = torch.tensor([float(mdlm_loss(model, batch, schedule=schedule, mask_token_id=MASK, sampling_eps=EPS,
                                              antithetic=True, generator=g)["loss"]) for _ in range(40)])
    stderr = float(draws.std()) / math.sqrt(len(draws))
    assert abs(float(draws.mean()) - exact) < 4 * stderr, (float(draws.mean()), exact, stderr)
    assert stderr < 0.01 * exact  # the check is sharp enough to see a wrong weight or normalisation


def test_unit_trains_on_seq2seq_and_lm_rows_and_reports_consistent_counts():
    torch.manual_seed(0)
    model = xlm.create_model("mdlm_tiny", vocab_size=V)
    unit = MdlmUnit(model, TOK, MdlmSamplerConfig(max_new_tokens=4))
    for examples, positions in (([{"prompt_ids": [7, 8], "target_ids": [9]}] * 3, 12),
                                ([{"input_ids": [BOS, 7, 8, 9, EOS]}, {"input_ids": [7, 8]}], 7)):
        out = unit.loss(model, unit.collate_train(examples))
        assert out["num_tokens"].item() == positions
        assert out["loss"].item() == pytest.approx(out["nll_sum"].item() / positions, rel=1e-6)
        out["loss"].backward()
        assert model.vocab_embed.weight.grad is not None
