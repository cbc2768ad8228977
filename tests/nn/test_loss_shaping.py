"""Loss shaping for masked objectives (xlm.nn.loss_shaping): focal weights as documented, the whole-mask
curriculum's chance at given steps, and each wired into MLM's and MDLM's losses and units."""

import math

import pytest
import torch

import xlm
from xlm.data.tokenizers import WordTokenizer
from xlm.models.mdlm.collators import MdlmSeq2SeqCollator
from xlm.models.mdlm.loss import mdlm_loss
from xlm.models.mdlm.noise import LogLinearSchedule
from xlm.models.mlm.collators import MlmSeq2SeqCollator, sample_mask
from xlm.models.mlm.loss import mlm_loss
from xlm.nn.loss_shaping import focal_weights, tie_repeats, whole_mask_probability
from xlm.registry import get_family

TOK = WordTokenizer(["a", "b", "c"])
MASK = TOK.mask_token_id
EXAMPLES = [{"prompt_ids": [7], "target_ids": [8, 9]}, {"prompt_ids": [8, 9], "target_ids": [7]}]


def test_focal_weights_are_one_minus_p_to_the_gamma_without_gradient():
    log_p = torch.log(torch.tensor([0.9, 0.5, 0.1])).requires_grad_()
    assert focal_weights(log_p, 2.0).tolist() == pytest.approx([0.01, 0.25, 0.81])
    assert focal_weights(log_p, 1.0).tolist() == pytest.approx([0.1, 0.5, 0.9])
    assert focal_weights(log_p, 0.0).tolist() == [1.0, 1.0, 1.0]
    assert not focal_weights(log_p, 2.0).requires_grad


@pytest.mark.parametrize("step,want", [(0, 0.8), (250, 0.6), (500, 0.4), (1000, 0.0), (5000, 0.0)])
def test_whole_mask_chance_falls_linearly_to_zero(step, want):
    assert whole_mask_probability(step, start=0.8, steps=1000) == pytest.approx(want)


def test_whole_mask_chance_without_steps_stays():
    assert whole_mask_probability(10**6, start=0.3, steps=0) == 0.3


def test_sample_mask_masks_whole_rows_and_draws_nothing_extra_at_zero():
    maskable = torch.zeros(64, 10, dtype=torch.bool)
    maskable[:, 4:] = True
    masked, t = sample_mask(maskable, generator=torch.Generator().manual_seed(0), whole_prob=1.0)
    assert torch.equal(masked, maskable) and torch.all(t == 1.0)
    half, t = sample_mask(maskable, generator=torch.Generator().manual_seed(0), whole_prob=0.5)
    whole = t == 1.0
    assert 10 < int(whole.sum()) < 54 and torch.equal(half[whole], maskable[whole])
    plain = sample_mask(maskable, generator=torch.Generator().manual_seed(1))
    zero = sample_mask(maskable, generator=torch.Generator().manual_seed(1), whole_prob=0.0)
    assert all(torch.equal(a, b) for a, b in zip(plain, zero))  # runs without the curriculum draw as before


class Table(torch.nn.Module):
    """Logits that depend only on the column (the MDLM form takes sigma and ignores it)."""

    def __init__(self, width: int, vocab: int) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(width, vocab, generator=torch.Generator().manual_seed(0)))

    def forward(self, input_ids, *args, output_positions=None, **_):
        logits = self.table[: input_ids.size(1)].expand(input_ids.size(0), -1, -1)
        return logits if output_positions is None else logits[output_positions]


def test_mlm_focal_loss_weighs_each_masked_nll_by_hand():
    batch = MlmSeq2SeqCollator(TOK, block_size=4, max_len=16)(EXAMPLES, generator=torch.Generator().manual_seed(0))
    model = Table(7, TOK.vocab_size)
    log_p = model.table.log_softmax(-1).detach()
    rows, cols = batch["masked"].nonzero(as_tuple=True)
    want = 0.0
    for r, c in zip(rows.tolist(), cols.tolist()):
        lp = float(log_p[c, batch["target_ids"][r, c]])
        want += (1 - math.exp(lp)) ** 2 * -lp
    out = mlm_loss(model, batch, focal_gamma=2.0)
    assert float(out["nll_sum"].detach()) == pytest.approx(want, rel=1e-5)
    assert float(out["loss"]) == pytest.approx(want / len(rows), rel=1e-5)  # still a mean over masked tokens


def test_mdlm_focal_and_whole_rows_by_hand():
    """A whole row is at t = 1 with its block masked; every masked token's NLL weighs ELBO weight x focal."""
    batch = MdlmSeq2SeqCollator(TOK, 16, 4)(EXAMPLES)
    model, schedule = Table(7, TOK.vocab_size), LogLinearSchedule(1e-3)
    out = mdlm_loss(model, batch, schedule=schedule, mask_token_id=MASK, sampling_eps=1e-3, antithetic=False,
                    t=torch.tensor([0.3, 0.3]), masked=torch.zeros(2, 7, dtype=torch.bool), whole_prob=1.0,
                    focal_gamma=1.5)
    assert int(out["num_masked"]) == 8  # both blocks whole, though the given mask was empty
    logits = model.table.detach().clone()
    logits[:, MASK] = float("-inf")
    log_p = logits.log_softmax(-1)
    weight_t1 = float(schedule.loss_weight(torch.tensor(1.0)))
    assert weight_t1 == pytest.approx(1.0, rel=1e-3)
    want = sum(weight_t1 * (1 - math.exp(float(log_p[c, batch["input_ids"][r, c]]))) ** 1.5
               * -float(log_p[c, batch["input_ids"][r, c]]) for r in range(2) for c in range(3, 7))
    assert float(out["nll_sum"].detach()) == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("arch", ["mlm_tiny", "mdlm_tiny"])
def test_units_shape_training_only_and_follow_the_step(arch):
    model = xlm.create_model(arch, vocab_size=TOK.vocab_size, whole_mask_prob=1.0, whole_mask_steps=100,
                             focal_gamma=2.0)
    family = get_family(arch.split("_")[0])
    unit = family.unit_factory(model, TOK, family.sampler_config_class(max_new_tokens=4))

    def whole_rows() -> bool:  # every row of a 16-row batch masked whole
        batch = unit.collate_train(EXAMPLES * 8)
        if "masked" in batch:  # MLM masks in its collator
            return torch.equal(batch["masked"], batch["maskable"])
        return int(unit.loss(unit.model, batch)["num_masked"]) == 16 * 4  # MDLM in its loss

    model.train()
    unit.set_training_step(0)
    assert whole_rows()  # chance 1 at step 0
    unit.set_training_step(100)
    assert not whole_rows()  # 0 from step 100 (a 32-position draw at uniform t is whole with tiny chance)
    unit.set_training_step(0)
    model.eval()
    assert not whole_rows()  # evaluation scores the plain objective


def test_the_trainer_tells_the_unit_each_step(tmp_path):
    """A run of 4 steps with the chance falling from 1 to 0 over 3: each step's collation sees 1, 2/3, 1/3, 0."""
    from xlm.data.tasks import build_task
    from xlm.recipes import train
    from xlm.recipes.distributed import init_distributed
    from xlm.recipes.trainer import Trainer

    args = train.parse_args(["--arch", "mlm_tiny", "--task", "star_easy", "--experiment", "debug",
                             "--output-dir", str(tmp_path / "run"), "trainer.max_steps=4", "trainer.eval_every_steps=0",
                             "trainer.progress_bar=false", "trainer.tensorboard=false", "model.whole_mask_prob=1.0",
                             "model.whole_mask_steps=3"])
    composed = train.resolve_config(args)
    task = build_task(composed.config.task)
    trainer = Trainer(train.fit_model_to_task(composed, task), get_family("mlm"), task, init_distributed("cpu"))
    seen = []

    class Spy:  # the real collator, the chance it is given noted when the model trains
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, examples, **kwargs):
            if trainer.unit.model.training:
                seen.append(kwargs["whole_prob"])
            return self.inner(examples, **kwargs)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    trainer.unit._seq2seq = Spy(trainer.unit._seq2seq)
    trainer.run()
    assert seen == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])


def test_collation_in_workers_follows_the_curriculum_by_each_batch_position(tmp_path):
    """With data.num_workers=2 each batch is collated ahead, in a worker's copy of the unit: the step it is for
    comes from its position, so step 0's rows are all masked whole (chance 1) and step 3's (chance 0) are not."""
    from xlm.data.tasks import build_task
    from xlm.recipes import train
    from xlm.recipes.distributed import init_distributed
    from xlm.recipes.trainer import Trainer

    args = train.parse_args(["--arch", "mlm_tiny", "--task", "star_easy", "--experiment", "debug",
                             "--output-dir", str(tmp_path / "run"), "data.num_workers=2", "model.whole_mask_prob=1.0",
                             "model.whole_mask_steps=3"])
    composed = train.resolve_config(args)
    task = build_task(composed.config.task)
    trainer = Trainer(train.fit_model_to_task(composed, task), get_family("mlm"), task, init_distributed("cpu"))
    trainer.model.train()
    try:
        rates = [torch.cat([b["t"] for b in trainer.batches.next()]) for _ in range(4)]
    finally:
        trainer.batches.close()
    assert bool((rates[0] == 1.0).all())
    assert not bool((rates[3] == 1.0).all())


def test_tie_repeats_gives_each_repeat_its_first_draw_and_leaves_the_rest():
    ids = torch.tensor([[5, 7, 7, 9, 9, 7, 5]])
    maskable = torch.tensor([[False, True, True, True, True, True, True]])
    draws = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]])
    tied = tie_repeats(draws, ids, maskable)
    # column 0 is not maskable: it keeps its draw and lends it to no one (column 6's 5 is the first maskable 5)
    assert tied[0].tolist() == pytest.approx([0.1, 0.2, 0.2, 0.4, 0.4, 0.2, 0.7])


def star_rows(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows shaped like a star target behind a 2-token prompt: p0 p1 p1 p2 p2 p3 p3 p4 [EOS]."""
    gen = torch.Generator().manual_seed(0)
    nodes = torch.stack([torch.randperm(20, generator=gen)[:5] + 10 for _ in range(n)])
    block = torch.stack([nodes[:, 0], nodes[:, 1], nodes[:, 1], nodes[:, 2], nodes[:, 2], nodes[:, 3], nodes[:, 3],
                         nodes[:, 4], torch.full((n,), 3)], dim=1)
    ids = torch.cat([torch.full((n, 2), 4), block], dim=1)
    maskable = torch.zeros_like(ids, dtype=torch.bool)
    maskable[:, 2:] = True
    return ids, maskable


def test_sample_mask_hides_a_token_everywhere_or_nowhere_at_the_same_rate():
    ids, maskable = star_rows(4000)
    masked, t = sample_mask(maskable, generator=torch.Generator().manual_seed(0), repeats_of=ids)
    for a, b in [(3, 4), (5, 6), (7, 8)]:  # the twin slots of p1, p2, p3
        assert torch.equal(masked[:, a], masked[:, b])
    assert not (masked & ~maskable).any() and masked.any(dim=1).all()
    # each position is still masked with chance t: over the rows with t > 1/2 (which the one-position rule for
    # an empty row hardly touches), E[masked] = E[t | t > 1/2] = 3/4
    high = t > 0.5
    assert float(masked[high, 2:].float().mean()) == pytest.approx(0.75, abs=0.02)
    untied, _ = sample_mask(maskable, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(untied[:, 3], untied[:, 4])  # without it twins are drawn apart


def test_mdlm_loss_masks_repeats_together():
    ids, noise_mask = star_rows(256)
    batch = {"input_ids": ids, "noise_mask": noise_mask, "attention_mask": torch.ones_like(noise_mask)}
    seen = []

    class Spy(Table):
        def forward(self, input_ids, *args, **kwargs):
            seen.append(input_ids == MASK)
            return super().forward(input_ids, *args, **kwargs)

    model = Spy(ids.size(1), 64)
    kwargs = dict(schedule=LogLinearSchedule(1e-3), mask_token_id=MASK, sampling_eps=1e-3, antithetic=False)
    mdlm_loss(model, batch, generator=torch.Generator().manual_seed(0), mask_repeats=True, **kwargs)
    mdlm_loss(model, batch, generator=torch.Generator().manual_seed(0), **kwargs)
    tied, plain = seen
    assert all(torch.equal(tied[:, a], tied[:, b]) for a, b in [(3, 4), (5, 6), (7, 8)])
    assert not torch.equal(plain[:, 3], plain[:, 4])


@pytest.mark.parametrize("arch", ["mlm_tiny", "mdlm_tiny"])
def test_mask_repeats_is_a_checked_model_setting(arch):
    assert xlm.create_model(arch, vocab_size=TOK.vocab_size, mask_repeats=True).config.mask_repeats is True
    with pytest.raises(TypeError, match="mask_repeats must be bool"):
        xlm.create_model(arch, vocab_size=TOK.vocab_size, mask_repeats="yes")


def test_mlm_unit_ties_repeats_while_training_only():
    model = xlm.create_model("mlm_tiny", vocab_size=TOK.vocab_size, mask_repeats=True)
    unit = get_family("mlm").unit_factory(model, TOK, get_family("mlm").sampler_config_class(max_new_tokens=4))
    examples = [{"prompt_ids": [7], "target_ids": [8, 8, 8]}] * 200  # block: 8 8 8 [EOS]

    def twins_apart() -> bool:
        masked = unit.collate_train(examples)["masked"]
        return bool((masked[:, -4] != masked[:, -3]).any() | (masked[:, -3] != masked[:, -2]).any())

    model.train()
    assert not twins_apart()
    model.eval()
    assert twins_apart()  # evaluation scores the plain objective


def test_mdlm_without_elbo_weight_is_the_mean_nll_over_masked_tokens():
    """loss_weighting "none": no sigma'(t)/expm1(sigma(t)) factor, divided by the masked tokens (MLM's objective),
    where the NELBO divides the weighted sum by the noised positions."""
    batch = MdlmSeq2SeqCollator(TOK, 16, 4)(EXAMPLES)
    model, schedule = Table(7, TOK.vocab_size), LogLinearSchedule(1e-3)
    masked = torch.zeros(2, 7, dtype=torch.bool)
    masked[0, 3], masked[1, 4:6] = True, True
    kwargs = dict(schedule=schedule, mask_token_id=MASK, sampling_eps=1e-3, antithetic=False,
                  t=torch.tensor([0.2, 0.6]), masked=masked)
    plain, elbo = mdlm_loss(model, batch, elbo_weight=False, **kwargs), mdlm_loss(model, batch, **kwargs)
    logits = model.table.detach().clone()
    logits[:, MASK] = float("-inf")
    nll = {(r, c): -float(logits.log_softmax(-1)[c, batch["input_ids"][r, c]]) for r, c in [(0, 3), (1, 4), (1, 5)]}
    assert int(plain["num_tokens"]) == 3 and float(plain["loss"].detach()) == pytest.approx(sum(nll.values()) / 3)
    weight = [float(schedule.loss_weight(torch.tensor(t))) for t in (0.2, 0.6)]
    want = (weight[0] * nll[0, 3] + weight[1] * (nll[1, 4] + nll[1, 5])) / int(batch["noise_mask"].sum())
    assert float(elbo["loss"].detach()) == pytest.approx(want, rel=1e-5)


def test_mdlm_unit_drops_the_elbo_weight_while_training_only():
    model = xlm.create_model("mdlm_tiny", vocab_size=TOK.vocab_size, loss_weighting="none")
    unit = get_family("mdlm").unit_factory(model, TOK, get_family("mdlm").sampler_config_class(max_new_tokens=4))
    batch = unit.collate_train(EXAMPLES * 8)
    model.train()
    masked_count = unit.loss(unit.model, batch)
    assert int(masked_count["num_tokens"]) == int(masked_count["num_masked"])
    model.eval()
    assert int(unit.loss(unit.model, batch)["num_tokens"]) == int(batch["noise_mask"].sum())  # the plain NELBO
    with pytest.raises(ValueError, match="loss_weighting must be one of"):
        xlm.create_model("mdlm_tiny", vocab_size=TOK.vocab_size, loss_weighting="inverse_t")
