import math

import pytest
import torch

import xlm
from xlm.data.tokenizers import WordTokenizer
from xlm.models.mlm.collators import MlmSeq2SeqCollator
from xlm.models.mlm.loss import mlm_loss

TOK = WordTokenizer(["a", "b", "c"])  # a=7 b=8 c=9
V = TOK.vocab_size
MASK = TOK.mask_token_id


class PositionTable(torch.nn.Module):
    """Logits depend only on the column: small enough to compute by hand. Records what it was asked."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table))
        self.calls: list[dict] = []

    def forward(self, input_ids, attention_mask=None, output_positions=None, **_):
        self.calls.append({"input_ids": input_ids.clone(), "output_positions": output_positions})
        logits = self.table[: input_ids.size(1)].expand(input_ids.size(0), -1, -1)
        return logits if output_positions is None else logits[output_positions]


def fixed_batch(t: list[float]):
    """prompt [a] / [b c], block of 4; masked: row 0 columns 4, 5 (c, [EOS]), row 1 columns 3, 6 (a, [PAD])."""
    examples = [{"prompt_ids": [7], "target_ids": [8, 9]}, {"prompt_ids": [8, 9], "target_ids": [7]}]
    batch = MlmSeq2SeqCollator(TOK, block_size=4, max_len=16)(examples)
    masked = torch.zeros_like(batch["masked"])
    masked[0, [4, 5]] = True
    masked[1, [3, 6]] = True
    batch.update(masked=masked, input_ids=batch["target_ids"].masked_fill(masked, MASK), t=torch.tensor(t))
    return batch


def table_and_nlls():
    width = 7  # [PAD] prompt... [BOS] + 4 block columns
    table = [[0.1 * ((col + 1) * (tok + 2) % 5) for tok in range(V)] for col in range(width)]

    def nll(col: int, token: int) -> float:
        logsumexp = math.log(sum(math.exp(v) for v in table[col]))
        return logsumexp - table[col][token]

    # row 0 = [PAD] a [BOS] b c [EOS] [PAD]; row 1 = b c [BOS] a [EOS] [PAD] [PAD]
    c, eos, a, pad = TOK.token_to_id("c"), TOK.eos_token_id, TOK.token_to_id("a"), TOK.pad_token_id
    return table, [nll(4, c), nll(5, eos)], [nll(3, a), nll(6, pad)]


def test_layout_of_the_fixed_batch():
    batch = fixed_batch([0.5, 0.5])
    P, B, E = TOK.pad_token_id, TOK.bos_token_id, TOK.eos_token_id
    assert batch["target_ids"].tolist() == [[P, 7, B, 8, 9, E, P], [8, 9, B, 7, E, P, P]]


def test_loss_matches_hand_computation():
    table, row0, row1 = table_and_nlls()
    model = PositionTable(table)
    out = mlm_loss(model, fixed_batch([0.5, 0.25]))
    expected = row0 + row1
    assert out["num_tokens"].item() == 4
    assert out["nll_sum"].item() == pytest.approx(sum(expected), rel=1e-6)
    assert out["loss"].item() == pytest.approx(sum(expected) / 4, rel=1e-6)
    # the model was asked for logits at the masked positions only, on the masked input
    (call,) = model.calls
    assert torch.equal(call["output_positions"], fixed_batch([0.5, 0.25])["masked"])
    assert (call["input_ids"][call["output_positions"]] == MASK).all()


def test_inverse_t_weighting_matches_hand_computation():
    table, row0, row1 = table_and_nlls()
    out = mlm_loss(PositionTable(table), fixed_batch([0.5, 0.25]), weighting="inverse_t")
    expected = sum(row0) / 0.5 + sum(row1) / 0.25
    assert out["num_tokens"].item() == 4
    assert out["loss"].item() == pytest.approx(expected / 4, rel=1e-6)
    # a t below 1/L (L = 4 maskable block positions) weighs as t = 1/4
    out = mlm_loss(PositionTable(table), fixed_batch([0.5, 0.01]), weighting="inverse_t")
    assert out["loss"].item() == pytest.approx((sum(row0) / 0.5 + sum(row1) * 4) / 4, rel=1e-6)


def test_num_masked_factor_weighting_matches_hand_computation():
    table, row0, row1 = table_and_nlls()
    batch = fixed_batch([0.5, 0.25])
    batch["masked"][1, 4] = True  # row 1 now has 3 masked positions: a, [EOS], [PAD]
    batch["input_ids"][1, 4] = MASK
    eos = table[4][TOK.eos_token_id]
    row1 = [*row1, math.log(sum(math.exp(v) for v in table[4])) - eos]
    out = mlm_loss(PositionTable(table), batch, weighting="num_masked_factor")
    assert out["num_tokens"].item() == 5  # a mean over masked positions, each weighted by 1 / (its row's + 1)
    assert out["loss"].item() == pytest.approx((sum(row0) / 3 + sum(row1) / 4) / 5, rel=1e-6)


def test_gradients_reach_only_through_masked_positions():
    table, _, _ = table_and_nlls()
    model = PositionTable(table)
    mlm_loss(model, fixed_batch([0.5, 0.5]))["loss"].backward()
    touched = model.table.grad.abs().sum(dim=1) > 0
    assert touched.tolist() == [False, False, False, True, True, True, True]


def test_unknown_weighting_is_refused():
    with pytest.raises(ValueError, match="weighting must be one of"):
        mlm_loss(PositionTable([[0.0] * V] * 7), fixed_batch([0.5, 0.5]), weighting="elbo")


def test_unit_loss_uses_the_config_weighting():
    torch.manual_seed(0)
    plain = xlm.create_model("mlm_tiny", vocab_size=V)
    weighted = xlm.create_model("mlm_tiny", vocab_size=V, loss_weighting="inverse_t")
    weighted.load_state_dict(plain.state_dict())
    family = xlm.get_family("mlm")
    sampler = family.sampler_config_class(max_new_tokens=4)
    batch = fixed_batch([0.5, 0.25])
    a = family.unit_factory(plain, TOK, sampler).loss(plain, batch)
    b = family.unit_factory(weighted, TOK, sampler).loss(weighted, batch)
    assert b["loss"].item() > 2.5 * a["loss"].item()  # weights 2 and 4
