"""The trainer's lr factor (xlm.recipes.optim.lr_schedule): linear warmup, then constant or a cosine whose
periods (`optim.cosine_cycles`) follow HF transformers' cosine_with_min_lr, the schedule xlm-core's MLM star
recipe names."""

import json

import pytest
import torch
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

from xlm.recipes import train
from xlm.recipes.config import OptimConfig
from xlm.recipes.optim import lr_schedule


def test_default_cosine_falls_once_from_one_to_the_floor():
    factor = lr_schedule(OptimConfig(warmup_steps=10, min_lr_ratio=0.1), total_steps=110)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.55)  # half way: the mean of 1 and the floor
    assert factor(110) == pytest.approx(0.1) and factor(500) == pytest.approx(0.1)


@pytest.mark.parametrize("cycles", [0.5, 4.0])
def test_cosine_cycles_follow_hf_cosine_with_min_lr_after_warmup(cycles):
    warmup, total = 20, 420
    ours = lr_schedule(OptimConfig(lr=1e-4, warmup_steps=warmup, min_lr_ratio=0.01, cosine_cycles=cycles), total)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    hf = get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, total, num_cycles=cycles, min_lr=1e-6)
    hf_factor = hf.lr_lambdas[0]
    for step in range(warmup, total + 1, 7):
        assert ours(step) == pytest.approx(hf_factor(step), abs=1e-9)
    if cycles == 4.0:  # four periods: back at the top at each quarter of the run
        assert ours(warmup + (total - warmup) // 4) == pytest.approx(1.0)
        assert ours(warmup + (total - warmup) // 8) == pytest.approx(0.01)


def test_cosine_cycles_must_be_positive(capsys):
    assert train.main(["--arch", "mlm_tiny", "--task", "star_easy", "--dump-config", "optim.cosine_cycles=0"]) == 2
    assert "optim.cosine_cycles must be positive" in capsys.readouterr().err


def test_decay_steps_ends_the_cosine_early_and_holds_the_floor():
    shorter = lr_schedule(OptimConfig(warmup_steps=10, min_lr_ratio=0.1), total_steps=110)
    held = lr_schedule(OptimConfig(warmup_steps=10, min_lr_ratio=0.1, decay_steps=110), total_steps=300)
    assert [held(s) for s in range(111)] == [shorter(s) for s in range(111)]  # a shorter run's first steps
    assert [held(s) for s in range(110, 301)] == pytest.approx([0.1] * 191)
    assert held(60) == pytest.approx(0.55)
    periods = lr_schedule(OptimConfig(warmup_steps=10, min_lr_ratio=0.1, cosine_cycles=4, decay_steps=110), 300)
    assert periods(109) > 0.98 and [periods(s) for s in range(110, 301)] == pytest.approx([0.1] * 191)


def test_decay_steps_must_end_after_warmup(capsys, tmp_path):
    out = tmp_path / "run"
    assert train.main(["--arch", "ilm_tiny", "--task", "star_easy", "--output-dir", str(out),
                       "optim.decay_steps=50", "optim.warmup_steps=100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.decay_steps must be null (the run's max_steps) or more than" in err[0]
    assert not out.exists()


def _logged_lrs(tmp_path, name, *overrides):
    """Trains (or resumes) an arlm_tiny run and returns its logged lr per step."""
    run = tmp_path / name
    assert train.main(["--arch", "arlm_tiny", "--task", "star_easy", "--experiment", "debug", "--output-dir", str(run),
                       "task.train_size=256", "trainer.eval_every_steps=0", "trainer.progress_bar=false",
                       "trainer.tensorboard=false", "trainer.log_every_steps=1", "optim.warmup_steps=2",
                       "optim.min_lr_ratio=0.1", *overrides]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["lr"] for r in records if r["split"] == "train"}


def test_extending_max_steps_on_resume_stretches_the_cosine_unless_decay_steps_is_set(tmp_path):
    straight = _logged_lrs(tmp_path, "straight", "trainer.max_steps=12")
    _logged_lrs(tmp_path, "extended", "trainer.max_steps=6")
    extended = _logged_lrs(tmp_path, "extended", "trainer.max_steps=12")
    assert [extended[s] for s in range(7, 13)] == pytest.approx([straight[s] for s in range(7, 13)])
    # the first 6 steps ran a 6-step cosine to its floor; the resume goes on where the 12-step cosine is
    assert extended[6] == pytest.approx(straight[12]) and extended[7] > 2 * extended[6]

    _logged_lrs(tmp_path, "held", "trainer.max_steps=6", "optim.decay_steps=6")
    held = _logged_lrs(tmp_path, "held", "trainer.max_steps=12", "optim.decay_steps=6")
    floor = held[12]
    assert [held[s] for s in range(7, 13)] == pytest.approx([floor] * 6) and held[3] > 5 * floor
