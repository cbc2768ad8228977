import pytest

from xlm.recipes import train
from xlm.recipes.config import ConfigError, build_config
from xlm.registry import families

ARLM = families.get("arlm")


def _config(*overrides, experiment=None, task="star_easy"):
    return build_config(family=ARLM, arch="arlm_star", task=task, output_dir="runs/x",
                        experiment=experiment, overrides=list(overrides))


def test_layers_compose_in_order():
    cfg = _config("optim.lr=5e-4")
    assert cfg.optim.lr == 5e-4  # command line beats the arch preset (2e-3)
    assert cfg.trainer.max_steps == 2500  # from configs/arch/arlm_star.yaml
    assert cfg.model.num_layers == 4  # from the arch registry
    assert _config(experiment="debug").trainer.max_steps == 4
    assert _config(task="star_hard").task.name == "star_hard"


def test_unknown_key_names_it_and_close_matches():
    with pytest.raises(ConfigError) as info:
        _config("optim.lrr=1e-3")
    assert "optim.lrr" in str(info.value) and "optim.lr" in str(info.value)
    with pytest.raises(ConfigError, match="model.num_layer"):
        _config("model.num_layer=3")


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        _config("trainer.max_steps=many")
    with pytest.raises(ConfigError, match="optim.schedule"):
        _config("optim.schedule=linear")
    with pytest.raises(ConfigError, match="pos_encoding"):
        _config("model.pos_encoding=alibi")
    with pytest.raises(ConfigError, match="key=value"):
        _config("optim.lr")


def test_unknown_task_and_arch_exit_with_a_message(capsys):
    assert train.main(["--arch", "arlm_star", "--task", "star_eazy", "--dump-config"]) == 2
    assert "star_easy" in capsys.readouterr().err
    assert train.main(["--arch", "arlm_strar", "--dump-config"]) == 2
    assert "did you mean 'arlm_star'" in capsys.readouterr().err


def test_dump_config_prints_every_section_with_the_task_vocabulary(capsys):
    assert train.main(["--arch", "arlm_star", "--task", "star_hard", "--dump-config", "seed=3"]) == 0
    out = capsys.readouterr().out
    for section in ("model:", "optim:", "trainer:", "data:", "task:", "sampler:"):
        assert section in out
    assert "vocab_size: 63" in out  # 7 special tokens + 56 node ids
    assert "seed: 3" in out


def test_context_too_short_for_the_task_is_refused(capsys):
    assert train.main(["--arch", "arlm_star", "--task", "star_hard", "--dump-config", "model.max_seq_len=32"]) == 2
    assert "model.max_seq_len" in capsys.readouterr().err
