import itertools
import math

import pytest
import torch

import xlm
from xlm.data.tokenizers import WordTokenizer
from xlm.models.ilm.collators import IlmSeq2SeqCollator
from xlm.models.ilm.loss import ilm_loss
from xlm.models.ilm.model import CONTINUE, STOP

TOK = WordTokenizer(["a", "b", "c"])  # a=7 b=8 c=9
V = TOK.vocab_size
A, B, C = 7, 8, 9


class ColumnTable(torch.nn.Module):
    """Token logits depend only on the column, stop logits only on the row: small enough to
    compute the loss by hand."""

    def __init__(self, table: list[list[float]], stop: list[list[float]]) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table))
        self.stop = torch.nn.Parameter(torch.tensor(stop))

    def forward(self, input_ids, attention_mask=None, positions=None):
        batch, seq = input_ids.shape
        return self.table[:seq].expand(batch, -1, -1), self.stop[:batch]


EXAMPLES = [{"prompt_ids": [A], "target_ids": [B, C, A]},
            {"prompt_ids": [B, C], "target_ids": [A]},
            {"prompt_ids": [C], "target_ids": [A, A, B]}]
DROPS = [[0, 2], [], [0, 1]]  # row 0 loses b and a; row 1 nothing; row 2 both a's (the same (gap, token) twice)


def fixed_batch():
    return IlmSeq2SeqCollator(TOK, max_len=16)(EXAMPLES, drops=DROPS)


def table_and_stop():
    table = [[0.1 * ((col + 2) * (tok + 3) % 7) - 0.2 for tok in range(V)] for col in range(5)]
    stop = [[0.3, -0.4], [1.2, 0.5], [-0.7, 0.2]]
    return table, stop


def lse(values) -> float:
    return math.log(sum(math.exp(v) for v in values))


def test_layout_of_the_fixed_batch():
    batch = fixed_batch()
    P, K, S = TOK.pad_token_id, TOK.cls_token_id, TOK.bos_token_id
    assert batch["input_ids"].tolist() == [[K, P, A, S, C], [K, B, C, S, A], [K, P, C, S, B]]
    assert batch["gap_mask"][:, 3:].all()
    assert not batch["gap_mask"][:, :3].any()
    assert list(zip(batch["target_rows"].tolist(), batch["target_cols"].tolist(),
                    batch["target_tokens"].tolist())) == [(0, 3, B), (0, 4, A), (2, 3, A), (2, 3, A)]
    assert len(batch["target_tokens"]) == sum(len(d) for d in DROPS)
    assert batch["num_dropped"].tolist() == [2, 0, 2]


def test_loss_matches_hand_computation():
    table, stop = table_and_stop()
    out = ilm_loss(ColumnTable(table, stop), fixed_batch())
    # one softmax over every (gap, token) pair of the row: gaps are the real columns from [BOS] on
    z0 = lse(table[3] + table[4])  # row 0: gaps at columns 3 and 4
    z2 = lse(table[3] + table[4])  # row 2 too
    token = [z0 - 0.5 * (table[3][B] + table[4][A]),  # weight 1/2 on each dropped token
             0.0,  # nothing dropped
             z2 - (0.5 + 0.5) * table[3][A]]  # the duplicate pair adds up to weight 1
    stop_nll = [lse(stop[0]) - stop[0][1],  # something dropped: target "continue" (class 1)
                lse(stop[1]) - stop[1][0],  # nothing dropped: target "stop" (class 0)
                lse(stop[2]) - stop[2][1]]
    assert out["token_loss"].item() == pytest.approx(sum(token) / 3, rel=1e-6)
    assert out["stop_loss"].item() == pytest.approx(sum(stop_nll) / 3, rel=1e-6)
    assert out["loss"].item() == pytest.approx((sum(token) + sum(stop_nll)) / 3, rel=1e-6)
    assert out["num_tokens"].item() == 3  # a mean over rows
    assert out["nll_sum"].item() == pytest.approx(out["loss"].item() * 3, rel=1e-6)
    assert out["num_targets"].item() == 4

    weighted = ilm_loss(ColumnTable(table, stop), fixed_batch(), stop_loss_weight=0.25)
    assert weighted["loss"].item() == pytest.approx((sum(token) + 0.25 * sum(stop_nll)) / 3, rel=1e-6)


def test_gradients_reach_only_the_gap_columns():
    table, stop = table_and_stop()
    model = ColumnTable(table, stop)
    ilm_loss(model, fixed_batch())["loss"].backward()
    touched = model.table.grad.abs().sum(dim=1) > 0
    assert touched.tolist() == [False, False, False, True, True]  # never [CLS], padding or the prompt
    assert (model.stop.grad.abs().sum(dim=1) > 0).all()


def test_stopping_class_weight_weights_each_rows_stop_loss_by_its_class():
    table, stop = table_and_stop()
    plain = ilm_loss(ColumnTable(table, stop), fixed_batch())
    out = ilm_loss(ColumnTable(table, stop), fixed_batch(), stopping_class_weight=0.3, stop_loss_weight=0.5)
    stop_nll = [lse(stop[0]) - stop[0][1], lse(stop[1]) - stop[1][0], lse(stop[2]) - stop[2][1]]
    weighted = [0.7 * stop_nll[0], 0.3 * stop_nll[1], 0.7 * stop_nll[2]]  # rows 0, 2 continue; row 1 stops
    assert out["stop_loss"].item() == pytest.approx(sum(weighted) / 3, rel=1e-6)
    assert out["loss"].item() == pytest.approx(plain["token_loss"].item() + 0.5 * sum(weighted) / 3, rel=1e-6)
    assert out["token_loss"] == plain["token_loss"]
    assert out["nll_bound_sum"] == plain["nll_bound_sum"]  # the bound is the likelihood's: unweighted


def test_attended_gaps_normalise_over_every_attended_column_but_cls():
    table, stop = table_and_stop()
    model = ColumnTable(table, stop)
    out = ilm_loss(model, fixed_batch(), insertion_gaps="attended")
    # rows [K P a S c], [K b c S a], [K P c S b]: the prompt's columns join the gaps, [CLS] and padding do not
    z0 = lse(table[2] + table[3] + table[4])
    z2 = lse(table[2] + table[3] + table[4])
    token = [z0 - 0.5 * (table[3][B] + table[4][A]), 0.0, z2 - table[3][A]]
    assert out["token_loss"].item() == pytest.approx(sum(token) / 3, rel=1e-6)
    assert out["bound_tokens"] == ilm_loss(model, fixed_batch())["bound_tokens"]  # L counts the target only
    out["loss"].backward()
    touched = model.table.grad.abs().sum(dim=1) > 0
    # the prompt's column 2 too (rows 0 and 2; row 1 inserts nothing), never [CLS] or padding
    assert touched.tolist() == [False, False, True, True, True]
    with pytest.raises(ValueError, match="insertion_gaps must be one of"):
        ilm_loss(model, fixed_batch(), insertion_gaps="prompt")


def test_the_config_validates_and_the_unit_passes_the_loss_options():
    with pytest.raises(ValueError, match="stopping_class_weight must be in"):
        xlm.create_model("ilm_tiny", vocab_size=V, stopping_class_weight=1.5)
    with pytest.raises(ValueError, match="insertion_gaps must be one of"):
        xlm.create_model("ilm_tiny", vocab_size=V, insertion_gaps="all")
    torch.manual_seed(0)
    model = xlm.create_model("ilm_tiny", vocab_size=V, stopping_class_weight=0.2, insertion_gaps="attended")
    family = xlm.get_family("ilm")
    unit = family.unit_factory(model, TOK, family.sampler_config_class(max_new_tokens=4))
    expected = ilm_loss(model, fixed_batch(), stopping_class_weight=0.2, insertion_gaps="attended")
    assert torch.equal(unit.loss(model, fixed_batch())["loss"], expected["loss"])
    assert not torch.equal(ilm_loss(model, fixed_batch())["loss"], expected["loss"])


def test_a_confident_right_model_has_near_zero_loss():
    table = [[-30.0] * V for _ in range(5)]
    table[2][A] = 30.0  # everything on the one true pair of row 2 ...
    batch = IlmSeq2SeqCollator(TOK, max_len=16)(EXAMPLES[2:], drops=[[0, 1]])
    assert batch["input_ids"][0, 2] == TOK.bos_token_id and batch["target_cols"].tolist() == [2, 2]
    out = ilm_loss(ColumnTable(table, [[-30.0, 30.0]]), batch)
    assert out["loss"].item() < 1e-6
    # a row with two different targets: the best the model can do is the target distribution itself,
    # half on each pair, and the loss is then its entropy, log 2
    table = [[-30.0] * V for _ in range(5)]
    table[2][B] = table[3][A] = 30.0
    batch = IlmSeq2SeqCollator(TOK, max_len=16)(EXAMPLES[:1], drops=[[0, 2]])
    assert batch["target_cols"].tolist() == [2, 3] and batch["target_tokens"].tolist() == [B, A]
    out = ilm_loss(ColumnTable(table, [[-30.0, 30.0]]), batch)
    assert out["token_loss"].item() == pytest.approx(math.log(2), abs=1e-6)


def test_unit_loss_on_a_real_model_uses_the_config_weight():
    torch.manual_seed(0)
    plain = xlm.create_model("ilm_tiny", vocab_size=V)
    no_stop = xlm.create_model("ilm_tiny", vocab_size=V, stop_loss_weight=0.0)
    no_stop.load_state_dict(plain.state_dict())
    family = xlm.get_family("ilm")
    sampler = family.sampler_config_class(max_new_tokens=4)
    a = family.unit_factory(plain, TOK, sampler).loss(plain, fixed_batch())
    b = family.unit_factory(no_stop, TOK, sampler).loss(no_stop, fixed_batch())
    assert torch.isclose(a["token_loss"], b["token_loss"]) and torch.isclose(b["loss"], b["token_loss"])
    assert torch.isclose(a["loss"], a["token_loss"] + a["stop_loss"])
    # an untrained model is close to uniform over the row's (gap, token) pairs
    uniform = (math.log(2 * V) + 0 + math.log(2 * V)) / 3
    assert abs(a["token_loss"].item() - uniform) < 0.1


def _path_log_probs(model, prompt: list[int], target: list[int], order: tuple[int, ...]) -> float:
    """log p of inserting `target` in `order` (indices into it), each step a fresh model call on
    [CLS] prompt [BOS] canvas, then stopping: the ILM's generative process, written out."""
    cls, bos = TOK.cls_token_id, TOK.bos_token_id
    kept: list[int] = []
    total = 0.0
    for index in order:
        canvas = [target[i] for i in kept]
        ids = torch.tensor([[cls, *prompt, bos, *canvas]])
        token_logits, stop_logits = model(ids)
        gaps = token_logits[0, len(prompt) + 1:]  # [BOS] and every canvas token: the gaps after them
        gap = sum(i < index for i in kept)
        total += gaps.flatten().log_softmax(0).view_as(gaps)[gap, target[index]].item()
        total += stop_logits[0].log_softmax(0)[CONTINUE].item()
        kept = sorted(kept + [index])
    _, stop_logits = model(torch.tensor([[cls, *prompt, bos, *target]]))
    return total + stop_logits[0].log_softmax(0)[STOP].item()


@torch.no_grad()
def test_a_left_padded_batch_with_cls_position_has_the_same_loss():
    """xlm-core's layout puts the prompt padding before [CLS] and gives `cls_position`: the same rows, so the same
    loss; read at column 0 instead, the stop head would see padding in the padded rows."""
    torch.manual_seed(0)
    model = xlm.create_model("ilm_tiny", vocab_size=V, init_std=0.3).eval()
    ours = fixed_batch()
    P, K = TOK.pad_token_id, TOK.cls_token_id
    theirs = {k: v.clone() for k, v in ours.items()}
    theirs["input_ids"][:, :2] = torch.tensor([[P, K], [K, B], [P, K]])  # [CLS] [PAD] -> [PAD] [CLS]
    theirs["attention_mask"][:, :2] = torch.tensor([[False, True], [True, True], [False, True]])
    with torch.no_grad():
        expected = ilm_loss(model, ours)
        left_padded = ilm_loss(model, theirs | {"cls_position": torch.tensor([1, 0, 1])})
        at_column_0 = ilm_loss(model, theirs)
    for key in ("loss", "token_loss", "stop_loss", "nll_bound_sum"):
        assert torch.allclose(left_padded[key], expected[key], atol=1e-6), key
    assert torch.allclose(at_column_0["token_loss"], expected["token_loss"], atol=1e-6)
    assert not torch.allclose(at_column_0["stop_loss"], expected["stop_loss"], atol=1e-4)


def test_nll_bound_is_the_insertion_order_elbo_and_bounds_the_exact_nll():
    torch.manual_seed(0)
    model = xlm.create_model("ilm_tiny", vocab_size=V, init_std=0.3).eval()  # far from uniform
    prompt, target = [C], [A, B, A, A]  # repeated tokens, two of them in one gap
    length = len(target)
    paths = [_path_log_probs(model, prompt, target, order) for order in itertools.permutations(range(length))]
    exact_nll = -torch.tensor(paths).logsumexp(0).item()  # every insertion path to the target, summed
    elbo_bound = -sum(paths) / len(paths) - math.lgamma(length + 1)  # uniform orders, q = 1/L!

    # what evaluation estimates: n ~ U{0..L} dropped, a uniform subset of them, one row per draw
    collate = IlmSeq2SeqCollator(TOK, max_len=16)
    expected = 0.0
    for n in range(length + 1):
        subsets = list(itertools.combinations(range(length), n))
        for drops in subsets:
            out = ilm_loss(model, collate([{"prompt_ids": prompt, "target_ids": target}], drops=[list(drops)]))
            assert out["bound_tokens"].item() == length
            expected += out["nll_bound_sum"].item() / (len(subsets) * (length + 1))
    assert expected == pytest.approx(elbo_bound, abs=1e-4)
    # the gap is KL(uniform orders || the model's posterior over paths to the target), nothing else
    posterior = torch.tensor(paths).log_softmax(0)
    kl = (-math.lgamma(length + 1) - posterior).mean().item()
    assert exact_nll < elbo_bound and elbo_bound - exact_nll == pytest.approx(kl, abs=1e-4)
