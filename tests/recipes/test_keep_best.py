"""trainer.keep_best: the checkpoint with the best validation metric is written, named in
checkpoints/best.json and never pruned, across a resume too."""

import json
import os
import signal

import pytest

from xlm.recipes import train
from xlm.recipes.checkpoint import checkpoint_dirs, load_checkpoint
from xlm.recipes.best_checkpoint import best_mode
from xlm.recipes.config import ConfigError
from xlm.recipes.trainer import TrainingInterrupted

from .test_faults import _trainer

BEST = ["trainer.keep_best=true", "trainer.eval_every_steps=1", "trainer.checkpoint_every_steps=3",
        "trainer.divergence_window=0",  # pruning as keep_last and keep_best say, whatever the loss does
        "trainer.keep_last_checkpoints=1", "trainer.max_steps=8", "optim.lr=3e-3", "optim.warmup_steps=2"]


def _val(run, metric):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[metric] for r in records if r["split"] == "val"}


def _best(run):
    return json.loads((run / "checkpoints" / "best.json").read_text())


@pytest.mark.parametrize(("metric", "pick"), [("val_loss", min), ("val_token_accuracy", max)])
def test_the_best_checkpoint_is_written_named_and_kept(tmp_path, metric, pick):
    trainer = _trainer(tmp_path, *BEST, f"trainer.best_metric={metric}")
    trainer.run()
    run = tmp_path / "run"
    values = _val(run, metric)
    assert sorted(values) == list(range(1, 9))  # every step evaluated, the last by the final evaluation
    best_step = next(s for s in sorted(values) if values[s] == pick(values.values()))  # the first of equals
    assert _best(run) == {"step": best_step, "checkpoint": f"step_{best_step:09d}", "metric": metric,
                          "value": values[best_step], "mode": "min" if pick is min else "max"}
    assert load_checkpoint(run / "checkpoints" / f"step_{best_step:09d}")[2]["step"] == best_step
    periodic = {s: v for s, v in values.items() if s < 8}
    best_before_end = next(s for s in sorted(periodic) if periodic[s] == pick(periodic.values()))
    # keep_last=1: the last checkpoint, the best one, and the one best.json named before the final evaluation
    assert {s for s, _ in checkpoint_dirs(run / "checkpoints")} == {8, best_step, best_before_end}


def test_a_resumed_run_goes_on_from_the_best_it_had(tmp_path):
    args = [*BEST, "trainer.best_metric=val_token_accuracy"]  # best at step 5, not bettered at 6 and 7
    _trainer(tmp_path / "straight", *args).run()
    stopped = _trainer(tmp_path / "stopped", *args)
    real_step = stopped._train_step

    def step():
        out = real_step()
        if stopped.step == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer's handler: stop after this step
        return out

    stopped._train_step = step
    with pytest.raises(TrainingInterrupted, match=r"checkpoint saved in .*step_000000005;"):
        stopped.run()
    _trainer(tmp_path / "stopped", *args).run()
    assert _best(tmp_path / "stopped" / "run") == _best(tmp_path / "straight" / "run")
    assert ({s for s, _ in checkpoint_dirs(tmp_path / "stopped" / "run" / "checkpoints")}
            == {s for s, _ in checkpoint_dirs(tmp_path / "straight" / "run" / "checkpoints")})


def test_the_mode_follows_the_metric_unless_set():
    assert best_mode("val_loss", None) == "min" and best_mode("val_nll_bound", None) == "min"
    assert best_mode("val_exact_match", None) == "max" and best_mode("val_exact_match", "min") == "min"


def test_keep_best_needs_an_evaluation_and_a_metric_it_gives(tmp_path, capsys):
    argv = ["--arch", "arlm_tiny", "--task", "star_easy", "--experiment", "debug", "--output-dir",
            str(tmp_path / "run"), "trainer.progress_bar=false", "trainer.tensorboard=false", "trainer.keep_best=true"]
    assert train.main([*argv, "trainer.eval_every_steps=0"]) == 2
    assert "trainer.eval_every_steps must be positive with trainer.keep_best=true" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"trainer.best_metric='val_bleu' is not a metric .* val_exact_match, "):
        _trainer(tmp_path, "trainer.keep_best=true", "trainer.eval_every_steps=1", "trainer.best_metric=val_bleu").run()
