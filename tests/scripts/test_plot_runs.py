"""scripts/plot_runs.py: the validation curves of `xlm train` run directories, with `xlm compare`'s panels."""

import importlib.util
from pathlib import Path

import matplotlib.image
import pytest

from xlm.recipes import train

ROOT = Path(__file__).parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("plot_runs", ROOT / "scripts" / "plot_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_run(path: Path, seed: int) -> Path:
    assert train.main(["--arch", "arlm_tiny", "--task", "star_easy", "--output-dir", str(path), f"seed={seed}",
                       "trainer.max_steps=4", "trainer.eval_every_steps=2", "task.train_size=16", "task.eval_size=4",
                       "data.batch_size=4"]) == 0
    return path


def test_plots_each_run_under_its_label_with_a_row_per_logged_metric(tmp_path, capsys):
    a, b = _tiny_run(tmp_path / "a", 0), _tiny_run(tmp_path / "b", 1)
    script = _script()
    assert script.labelled_run(f"seed 1=run={b}") == ("seed 1=run", b)
    assert script.labelled_run(str(a)) == ("a", a)
    out = tmp_path / "plots" / "curves.png"
    assert script.main([str(a), f"seed 1={b}", "--output", str(out), "--title", "t"]) == 0
    height = matplotlib.image.imread(out).shape[0]
    # arlm on star: exact match, probe_next, probe_branch, token accuracy, loss (no probe_goal_pred), 3 inches each
    assert height == pytest.approx(5 * 3.0 * 110, abs=2)
    assert str(out) in capsys.readouterr().out


def test_a_directory_without_metrics_is_one_error_line(tmp_path, capsys):
    assert _script().main([str(tmp_path), "--output", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no metrics.jsonl" in err and not (tmp_path / "c.png").exists()
