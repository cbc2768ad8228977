import pytest
import yaml

from xlm.data.corpora import pydoc_corpus
from xlm.data.task import TaskConfig
from xlm.data.tasks import build_task, task_config
from xlm.data.tasks.text import TextTaskConfig
from xlm.recipes import train
from xlm.recipes.config import ConfigError, build_config
from xlm.registry import families

ARLM = families.get("arlm")


def _config(*overrides, experiment=None, task="star_easy"):
    return build_config(family=ARLM, arch="arlm_star", task=task, output_dir="runs/x",
                        experiment=experiment, overrides=list(overrides)).config


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


def test_an_override_left_without_a_value_is_refused_by_every_command(tmp_path, capsys):
    """`init_from=$CKPT` with CKPT unset meant null: a full run from scratch, trained without a word."""
    from xlm.recipes import evaluate

    assert train.main(["--arch", "mdlm_tiny", "--output-dir", str(tmp_path / "run"), "init_from="]) == 2
    assert capsys.readouterr().err.strip() == ("error: override 'init_from=' has no value (an unset shell variable?); "
                                               "write init_from=null for none, or leave it out for the preset's")
    assert not (tmp_path / "run").exists()
    for item in ("task.eval_size= ", "sampler.temperature="):
        assert evaluate.main(["--model", "arlm_star_easy", item]) == 2
        assert f"error: override {item!r} has no value" in capsys.readouterr().err
    assert _config("task.eval_size=7").task.eval_size == 7


def test_unknown_task_and_arch_exit_with_a_message(capsys):
    assert train.main(["--arch", "arlm_star", "--task", "star_eazy", "--dump-config"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'star_eazy'; did you mean 'star_easy'" in err and len(err.splitlines()) == 1
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


def test_the_task_node_is_typed_by_the_task_config_class():
    star = _config("task.seed=3").task
    assert type(star) is TaskConfig and star.seed == 3
    text = _config("task.data_files=corpus.txt", "task.block_size=64", "task.streaming=true", "task.packing=false",
                   task="text").task
    assert type(text) is TextTaskConfig
    assert (text.data_files, text.block_size, text.streaming, text.packing) == ("corpus.txt", 64, True, False)
    assert _config(task="text").task.block_size == 128  # from the configs/task/text.yaml preset


def test_a_text_key_on_a_star_task_is_an_unknown_key():
    for override in ("task.block_size=64", "task.streaming=true", "task.data_files=corpus.txt"):
        with pytest.raises(ConfigError) as info:
            _config(override)
        message = str(info.value)
        key = override.split("=")[0]
        assert f"unknown config key {key!r}" in message and "did you mean task." in message
        assert f"{key} is a setting of the text task, not of 'star_easy'" in message
    with pytest.raises(ConfigError, match="did you mean task.data_files"):
        _config("task.data_file=corpus.txt", task="text")


def test_a_value_of_the_wrong_type_is_one_line_naming_the_key():
    for override, wanted in (("trainer.max_steps=five", "Integer"), ("optim.lr=abc", "Float")):
        with pytest.raises(ConfigError) as info:
            _config(override)
        message = str(info.value)
        assert message.startswith(f"bad value for config key {override.split('=')[0]!r}") and wanted in message
        assert "\n" not in message, message  # OmegaConf's full_key/reference_type lines stay out


def test_task_name_is_chosen_by_the_task_argument():
    with pytest.raises(ConfigError, match="task.name='sort' .*command line.* choose the task with --task"):
        _config("task.name=sort")


def _dumped(capsys, *argv):
    assert train.main(["--arch", "arlm_star", "--dump-config", *argv]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_vocab_size_and_max_new_tokens_come_from_the_task_unless_pinned(capsys):
    star_hard = build_task(task_config("star_hard"))
    assert ARLM.sampler_config_class().max_new_tokens != star_hard.max_new_tokens
    fitted = _dumped(capsys, "--task", "star_hard")
    assert fitted["model"]["vocab_size"] == 63 and fitted["sampler"]["max_new_tokens"] == star_hard.max_new_tokens
    pinned = _dumped(capsys, "--task", "star_hard", "model.vocab_size=100", "sampler.max_new_tokens=7")
    assert pinned["model"]["vocab_size"] == 100 and pinned["sampler"]["max_new_tokens"] == 7
    assert train.main(["--arch", "arlm_star", "--task", "star_hard", "--dump-config", "model.vocab_size=20"]) == 2
    assert "model.vocab_size=20 (from the command line (model.vocab_size=20)) is smaller" in capsys.readouterr().err


def test_prompt_format_comes_from_the_task_unless_pinned(capsys, tmp_path):
    assert _dumped(capsys, "--task", "star_hard")["sampler"]["prompt_format"] == "seq2seq"
    pinned = _dumped(capsys, "--task", "star_hard", "sampler.prompt_format=continuation")
    assert pinned["sampler"]["prompt_format"] == "continuation"
    corpus = pydoc_corpus(tmp_path / "pydoc.txt")
    text = _dumped(capsys, "--task", "text", f"task.data_files={corpus}", "task.tokenizer_vocab_size=300")
    assert text["sampler"]["prompt_format"] == "continuation"  # text to continue, not seq2seq rows


def test_a_flag_that_names_a_setting_is_told_its_override(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(["--arch", "mlm_tiny", "--seed", "1", "--max-steps", "5", "--bogus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("xlm train: error: unrecognized arguments:")
    assert "--seed -> seed=..., --max-steps -> trainer.max_steps=..." in err and "--bogus ->" not in err
