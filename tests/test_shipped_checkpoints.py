"""Every checkpoint shipped inside the package loads offline from its card (sha256 verified) and
still scores what its card says on the first 500 test examples (tolerance 0.02 absolute, for
sampling samplers' run-to-run float differences across machines)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

import xlm
from xlm.assets.store import all_cards
from xlm.shipped import cards_dir
from xlm.data.tasks import build_task, task_config

from tests.tiny_run_dir import tiny_run_dir

SHIPPED = sorted(name for name, card in all_cards().items()
                 if card.source_file and card.source_file.parent == cards_dir() and card.metrics)
TOLERANCE = 0.02


def _ship_script():
    path = Path(__file__).parents[1] / "scripts" / "ship_checkpoint.py"
    spec = importlib.util.spec_from_file_location("ship_checkpoint", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ship_checkpoint"] = module
    spec.loader.exec_module(module)
    return module


def test_some_checkpoints_are_shipped():
    assert SHIPPED, "no shipped checkpoint cards found in assets/cards"


def test_a_card_is_not_shipped_with_a_part_of_the_test_split(tmp_path, monkeypatch, capsys):
    run = tiny_run_dir(tmp_path / "run")
    (run / "eval_star_easy_test.json").write_text(json.dumps({"num_examples": 40, "exact_match": 1.0}))
    script = _ship_script()
    monkeypatch.setattr(script, "CARD_DIR", tmp_path / "cards")  # never the repository's own cards
    assert script.main([str(run), "--name", "tiny_partial", "--command", "c"]) == 2
    assert "scores 40 test examples, not the whole split (5000)" in capsys.readouterr().err
    (run / "eval_star_easy_test.json").write_text(json.dumps({"num_examples": 5000, "exact_match": 1.0,
                                                              "sampler_overrides": {"strategy": "sample"}}))
    assert script.main([str(run), "--name", "tiny_sampled", "--command", "c"]) == 2
    assert "with sampler settings other than the run's ({'strategy': 'sample'})" in capsys.readouterr().err
    (run / "eval_star_easy_test.json").write_text(json.dumps({"num_examples": 5000, "exact_match": 1.0,
                                                              "task_overrides": ["task.seed=7"]}))
    assert script.main([str(run), "--name", "tiny_other_task", "--command", "c"]) == 2
    assert "with task settings other than the run's (['task.seed=7'])" in capsys.readouterr().err
    assert not (tmp_path / "cards").exists()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_matches_its_card(name):
    card = all_cards()[name]
    assert (cards_dir() / card.checkpoint).stat().st_size <= 4 * 1024 * 1024
    generator = xlm.load_generator(name)
    example = build_task(task_config(card.task)).dataset("test")[0]
    assert isinstance(generator.generate([example["prompt"]], seed=0)[0], str)
    expected = card.metrics["test_first_500"]
    measured = _ship_script().slice_metrics(cards_dir() / "checkpoints" / name, card.task)
    for metric in ("exact_match", "token_accuracy"):
        assert abs(measured[metric] - expected[metric]) <= TOLERANCE, (metric, measured, expected)
