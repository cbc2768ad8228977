"""The *_star_long presets: the *_star model and recipe with the longer budget (and for ILM the schedule) that
learnt star_easy (issue #30)."""

import pytest
import yaml

from xlm.recipes import train

#: arch -> (its star preset, its steps, the settings it changes by section)
LONG = {"mlm_star_long": ("mlm_star", 20_000, {}),
        "ilm_star_long": ("ilm_star", 16_000, {"optim": {"min_lr_ratio": 0.25, "decay_steps": 10_000}}),
        "mdlm_star_long": ("mdlm_star", 20_000, {"model": {"init": "normal"},
                                                 "sampler": {"unmask_schedule": "threshold", "strategy": "greedy"}})}


def _dump(arch: str, capsys) -> dict:
    assert train.main(["--arch", arch, "--task", "star_easy", "--dump-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("arch", sorted(LONG))
def test_long_preset_is_its_star_preset_with_the_longer_budget(arch, capsys):
    base_arch, steps, changes = LONG[arch]
    long, base = _dump(arch, capsys), _dump(base_arch, capsys)
    assert long["trainer"]["max_steps"] == steps != base["trainer"]["max_steps"]
    assert long["trainer"]["eval_every_steps"] == 1000
    for section in ("model", "optim", "data", "sampler"):
        changed = changes.get(section, {})
        assert long[section] == {**base[section], **changed}, section
        assert all(base[section][key] != value for key, value in changed.items()), section
