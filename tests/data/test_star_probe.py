"""The star probe: which rows it asks a family for and how it reads them (a target_probs whose answers
the test sets), each family's target_probs against the model's own forward, and the shipped cards' values:
the MLM card has both edge lookups, the MDLM card the backward one, the ARLM card the forward one, the ILM card
the backward one and most of the forward one (as shares of what its objective asks for)."""

import functools
import math

import pytest
import torch

import xlm
from xlm.data.tasks import build_task, task_config
from xlm.data.tasks.star import generate_star_graphs, probe_star
from xlm.recipes.evaluation import evaluate_predictions


def _examples(n=2, task="star_easy"):
    import numpy as np

    cols = generate_star_graphs(task, n, np.random.default_rng(0))
    return [{k: cols[k][i] for k in cols} for i in range(n)]


def test_probe_asks_one_hidden_row_and_one_per_edge_and_reads_the_slots_by_hand():
    examples = _examples(2)
    asked = []

    def target_probs(rows, reveal):  # P = reveal / 10 + slot / 100: which row and slot was read shows in the value
        asked.append((list(rows), list(reveal)))
        return torch.tensor([[r / 10 + j / 100 for j in range(9)] for r in reveal])

    out = probe_star(target_probs, examples)
    rows, reveal = asked[0]
    assert len(asked) == 1 and rows == [examples[0]] * 5 + [examples[1]] * 5  # path of 5 nodes: 1 + 4 edges
    # "p0 p1 p1 p2 p2 p3 p3 p4": reveal nothing; then up to p0 (1 slot), p1 (3), p2 (5), p3 (7)
    assert reveal == [0, 1, 3, 5, 7] * 2
    for o in out:
        assert o["probe_goal_pred"] == pytest.approx((0.05 + 0.06) / 2)  # y = p3 at slots 5 and 6, nothing revealed
        assert o["probe_branch"] == pytest.approx(0.1 + 0.01)  # the source is the centre: p1 at slot 1, reveal 1
        # lookups: p2 at slot 3 (reveal 3), p3 at 5 (reveal 5), p4 at 7 (reveal 7)
        assert o["probe_next"] == pytest.approx((0.33 + 0.55 + 0.77) / 3)


def test_probe_of_a_variable_star_finds_its_branch_on_the_path():
    examples = _examples(3, "star_medium")
    out = probe_star(lambda rows, reveal: torch.full((len(rows), 11), 0.5), examples)
    for example, o in zip(examples, out):
        assert o["probe_goal_pred"] == 0.5 and o["probe_branch"] == 0.5
        lookups = len(example["path"]) - 2  # every path node but the goal and the one centre
        assert (o["probe_next"] == 0.5) if lookups else math.isnan(o["probe_next"])


def _card_unit(name, **sampling):
    """The card's model in its family's unit, with the card's sampler settings or the given ones."""
    generator = xlm.load_generator(name, **sampling)
    return generator.family.unit_factory(generator.model, generator.tokenizer, generator.sampler_config)


@pytest.mark.parametrize("name", ["mlm_star_easy", "mdlm_star_easy", "arlm_star_easy"])
def test_target_probs_are_the_models_own_softmax_at_the_hidden_slots(name):
    unit, task = _card_unit(name), build_task(task_config("star_easy"))
    model, family = unit.model, name.split("_")[0]
    example = task.dataset("test")[0]
    tok = task.tokenizer
    target = list(example["target_ids"])
    probs = unit.target_probs([example, example], [0, 3])
    prompt = list(example["prompt_ids"]) + [tok.bos_token_id]
    with torch.no_grad():
        if family == "arlm":  # teacher forced: slot 3 read after prompt + [BOS] + slots 0..2
            logits = model(torch.tensor([prompt + target[:3]]))[0, -1]
            assert math.isnan(probs[0, 3]) and not math.isnan(probs[0, 0])  # slot 0 is the reveal-0 row's read
            assert probs[1, 3] == pytest.approx(logits.softmax(-1)[target[3]].item(), abs=1e-5)
            return
        block = len(target) + 1
        for row, shown in ((0, 0), (1, 3)):
            ids = prompt + target[:shown] + [tok.mask_token_id] * (block - shown)
            if family == "mlm":
                logits = model(torch.tensor([ids]))[0]
            else:
                frac = torch.tensor([(block - shown) / block])
                top = unit.schedule.move_chance(torch.ones(1))
                logits = model(torch.tensor([ids]), -torch.log1p(-torch.minimum(frac, top)))[0].float()
                logits[:, tok.mask_token_id] = float("-inf")
            p = logits.softmax(-1)
            for j in range(len(target)):
                want = float("nan") if j < shown else p[len(prompt) + j, target[j]].item()
                assert probs[row, j].item() == pytest.approx(want, abs=1e-5, nan_ok=True)


def test_ilm_target_probs_are_its_joint_insertion_softmax_over_the_targets_share():
    unit, task = _card_unit("ilm_star_easy"), build_task(task_config("star_easy"))
    example, tok = task.dataset("test")[0], task.tokenizer
    target = list(example["target_ids"])
    probs = unit.target_probs([example, example], [0, 3])
    for row, kept in ((0, 0), (1, 3)):
        ids = [tok.cls_token_id] + list(example["prompt_ids"]) + [tok.bos_token_id] + target[:kept]
        with torch.no_grad():
            logits = unit.model(torch.tensor([ids]))[0][0].float()
        bos = len(example["prompt_ids"]) + 1
        joint = logits[bos:].flatten().softmax(-1).view(len(ids) - bos, -1)  # every (gap, token) pair from [BOS] on
        missing = target[kept:]
        for j in range(len(target)):
            want = (float("nan") if j < kept
                    else joint[-1, target[j]].item() * len(missing) / missing.count(target[j]))
            assert probs[row, j].item() == pytest.approx(want, abs=1e-5, nan_ok=True)


@functools.cache
def _card_means(name, **sampling):
    """The card's mean metrics on the first 200 star_easy test prompts, seeded; computed once per test session."""
    task = build_task(task_config("star_easy"))
    prompts = task.dataset("test").select(range(200))
    torch.manual_seed(0)
    means, _ = evaluate_predictions(_card_unit(name, **sampling), task, prompts, batch_size=100,
                                    device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    return means


def test_the_probe_tells_the_shipped_cards_apart():
    """The MLM card (12,000 steps) has the lookup backward and forward; the MDLM card (mdlm_star_long) backward
    only: the goal's predecessor near 1, a next node given the path so far well short of it, the branch below the
    1/3 of a guess among the centre's successors; ARLM's teacher-forced lookups are near 1, its branch near 1/3."""
    means = {name: _card_means(name) for name in ("mdlm_star_easy", "mlm_star_easy", "arlm_star_easy")}
    assert means["mdlm_star_easy"]["probe_goal_pred"] > 0.95
    assert 0.5 < means["mdlm_star_easy"]["probe_next"] < 0.85 and means["mdlm_star_easy"]["probe_branch"] < 0.25
    assert means["mlm_star_easy"]["probe_goal_pred"] > 0.95 and means["mlm_star_easy"]["probe_next"] > 0.95
    assert means["arlm_star_easy"]["probe_next"] > 0.95
    assert 0.25 < means["arlm_star_easy"]["probe_branch"] < 0.42
    assert "probe_goal_pred" not in means["arlm_star_easy"]  # a left-to-right model cannot be read that way


def test_the_probe_reads_the_ilm_cards_lookups_against_a_fresh_models_spread():
    """ILM's probe is a share of what its objective asks for: the shipped card (ilm_star_long's recipe, exact match
    0.96) puts nearly all of it on the goal's predecessor and most on the next node, less on the branch, and an
    untrained model of the same shape little of it anywhere (its mass is spread over the vocabulary)."""
    card = _card_means("ilm_star_easy")
    assert card["probe_goal_pred"] > 0.9 and card["probe_next"] > 0.75
    assert card["probe_branch"] < card["probe_next"] - 0.2
    unit = _card_unit("ilm_star_easy")
    torch.manual_seed(0)
    fresh = type(unit)(type(unit.model)(unit.model.config).eval(), unit.tokenizer, unit.predictor.config)
    task = build_task(task_config("star_easy"))
    examples = [task.dataset("test")[i] for i in range(50)]
    untrained = probe_star(fresh.target_probs, examples)
    assert max(sum(o[k] for o in untrained) / 50 for k in card if k.startswith("probe_")) < 0.5


def test_the_mdlm_card_finds_the_path_only_in_confidence_order():
    """Why mdlm_star_long samples by confidence: its lookups run from the goal back, and the ancestral sampler's
    random order often commits the branch slot first, where the card can only guess (its probe_branch)."""
    assert _card_unit("mdlm_star_easy").predictor.config.unmask_schedule == "threshold"
    exact = {"confidence": _card_means("mdlm_star_easy")["exact_match"],
             "ancestral": _card_means("mdlm_star_easy", unmask_schedule="ancestral", strategy="sample")["exact_match"]}
    assert exact["confidence"] > 0.95 and exact["ancestral"] < 0.6, exact
