"""The *_star_xlmcore presets compose to xlm-core's star size and recipe (issue #30), one command each."""

import pytest
import yaml

import xlm
from xlm.recipes import train

STEPS = {"arlm_star_xlmcore": 80_000, "ilm_star_xlmcore": 80_000, "mlm_star_xlmcore": 300_000,
         "mdlm_star_xlmcore": 300_000}  # MDLM: xlm-core has no star recipe of its own, MLM's is used
#: xlm-core 0.3.1's star_easy_*.yaml: ARLM and ILM constant after 500 warmup steps; MLM HF's cosine_with_min_lr
#: (min_lr 1e-6, 2,000 warmup steps, num_cycles 4)
SCHEDULES = {"arlm_star_xlmcore": ("constant", 500), "ilm_star_xlmcore": ("constant", 500),
             "mlm_star_xlmcore": ("cosine", 2000, 0.01, 4), "mdlm_star_xlmcore": ("cosine", 2000, 0.01, 4)}


@pytest.mark.parametrize("arch", sorted(STEPS))
def test_xlmcore_preset_composes_to_its_size_optimizer_and_budget(arch, capsys):
    assert train.main(["--arch", arch, "--task", "star_easy", "--dump-config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    model, optim = config["model"], config["optim"]
    assert (model["model_dim"], model["num_layers"], model["num_heads"]) == (768, 12, 12)
    assert (optim["lr"], optim["beta1"], optim["beta2"], optim["weight_decay"]) == (1e-4, 0.9, 0.999, 0.01)
    schedule = (optim["schedule"], optim["warmup_steps"])
    if optim["schedule"] == "cosine":
        schedule += (optim["min_lr_ratio"], optim["cosine_cycles"])
    assert schedule == SCHEDULES[arch] and config["data"]["batch_size"] == 64
    assert config["trainer"]["max_steps"] == STEPS[arch]


def test_xlmcore_size_is_about_85m_parameters():
    model = xlm.create_model("mlm_star_xlmcore", vocab_size=27)
    assert 80e6 < sum(p.numel() for p in model.parameters()) < 90e6


def test_compare_with_the_preset_budget_sets_no_steps_of_its_own(tmp_path, monkeypatch):
    """--budget-preset passes no trainer.max_steps: each run keeps its arch preset's (or, as here, the one
    the command line gives every run), where --budget-steps sets one for all."""
    from xlm.recipes import compare

    real, calls = compare.train.main, []
    monkeypatch.setattr(compare.train, "main", lambda argv: calls.append(argv) or real(argv))  # a spy: it trains
    tiny = ["--archs", "arlm_tiny", "--test-limit", "4", "--eval-every-steps", "3", "task.train_size=16",
            "task.eval_size=4", "data.batch_size=4"]
    assert compare.main(["--task", "star_easy", "--budget-preset", "--output-dir", str(tmp_path / "r"), *tiny,
                         "trainer.max_steps=3"]) == 0
    assert [a for a in calls[0] if a.startswith("trainer.max_steps=")] == ["trainer.max_steps=3"]
    assert "each arch's preset steps" in (tmp_path / "r" / "table.md").read_text()
    assert compare.main(["--task", "star_easy", "--budget-steps", "2", "--output-dir", str(tmp_path / "s"),
                         *tiny]) == 0
    assert [a for a in calls[1] if a.startswith("trainer.max_steps=")] == ["trainer.max_steps=2"]
