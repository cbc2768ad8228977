"""The *_star_xlmcore presets compose to xlm-core's star size and recipe (issue #30), one command each."""

import pytest
import yaml

import xlm
from xlm.recipes import train

STEPS = {"arlm_star_xlmcore": 80_000, "ilm_star_xlmcore": 80_000, "mlm_star_xlmcore": 300_000,
         "mdlm_star_xlmcore": 300_000}  # MDLM: xlm-core has no star recipe of its own, MLM's is used


@pytest.mark.parametrize("arch", sorted(STEPS))
def test_xlmcore_preset_composes_to_its_size_optimizer_and_budget(arch, capsys):
    assert train.main(["--arch", arch, "--task", "star_easy", "--dump-config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    model, optim = config["model"], config["optim"]
    assert (model["model_dim"], model["num_layers"], model["num_heads"]) == (768, 12, 12)
    assert (optim["lr"], optim["beta1"], optim["beta2"], optim["weight_decay"]) == (1e-4, 0.9, 0.999, 0.01)
    assert (optim["schedule"], optim["warmup_steps"], config["data"]["batch_size"]) == ("constant", 500, 64)
    assert config["trainer"]["max_steps"] == STEPS[arch]


def test_xlmcore_size_is_about_85m_parameters():
    model = xlm.create_model("mlm_star_xlmcore", vocab_size=27)
    assert 80e6 < sum(p.numel() for p in model.parameters()) < 90e6
