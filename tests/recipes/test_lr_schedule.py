"""The trainer's lr factor (xlm.recipes.optim.lr_schedule): linear warmup, then constant or a cosine whose
periods (`optim.cosine_cycles`) follow HF transformers' cosine_with_min_lr, the schedule xlm-core's MLM star
recipe names."""

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
