"""Ctrl-C while training (issue 29): the first stops at the next safe point (after the step, between
micro-batches, between evaluation batches) with a checkpoint and exit 130; a second stops at once,
exit 130, no traceback, the saved checkpoints untouched; Ctrl-C in the final evaluation is exit 130,
never 0. Real processes and real signals; every interrupted run resumes to bitwise the weights of a
run left alone."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xlm.recipes.checkpoint import checkpoint_dirs, load_checkpoint
from xlm.recipes.progress import Eta
from xlm.recipes.trainer import TrainingInterrupted

from .test_faults import _trainer

BASE = ["--arch", "arlm_tiny", "--task", "star_easy", "--experiment", "debug", "trainer.tensorboard=false",
        "trainer.eval_every_steps=0", "trainer.log_every_steps=1", "optim.warmup_steps=2",
        "trainer.progress_every_seconds=0"]


def _start(run: Path, *extra: str, module: str = "xlm.recipes.train", base: list[str] = BASE) -> subprocess.Popen:
    cmd = [sys.executable, "-m", module, *base, "--output-dir", str(run), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _finish(proc: subprocess.Popen, expect: int = 0) -> tuple[str, str]:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == expect, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    return out, err


def _train_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line)["step"] for line in lines if line.endswith("}") and '"train"' in line]


def _wait(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.time() + 300
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()}"
        assert time.time() < deadline, f"no {what} after 300 s"
        time.sleep(0.01)


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_ctrl_c_stops_after_the_step_with_a_checkpoint_and_resumes_bitwise(tmp_path):
    steps = ["trainer.max_steps=120", "trainer.checkpoint_every_steps=1000", "task.train_size=2048",
             "data.batch_size=16"]
    _finish(_start(tmp_path / "straight", *steps))
    run = tmp_path / "stopped"
    proc = _start(run, *steps)
    _wait(lambda: len(_train_steps(run)) >= 3, proc, "step 3")
    proc.send_signal(signal.SIGINT)
    _, err = _finish(proc, expect=130)
    _no_traceback(err)
    assert "Ctrl-C: stopping after this step (Ctrl-C again to stop now)" in err
    stopped = _train_steps(run)[-1]
    assert 3 <= stopped < 120 and f"stopped by SIGINT at step {stopped}; checkpoint saved in" in err
    assert not (run / "model.safetensors").exists()
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    _finish(_start(run, *steps))
    _same_weights(tmp_path / "straight", run)
    assert _train_steps(run) == list(range(1, 121))
    assert [s["status"] for s in json.loads((run / "run.json").read_text())["segments"]] == ["interrupted", "finished"]


def test_a_second_ctrl_c_stops_at_once_and_keeps_what_was_saved(tmp_path):
    # steps of a second or more (batch 384 of arlm_star), so that the second Ctrl-C comes within one
    steps = ["--arch", "arlm_star", "task.train_size=768", "data.batch_size=384", "trainer.max_steps=3",
             "trainer.checkpoint_every_steps=1"]
    run = tmp_path / "run"
    proc = _start(run, *steps)
    _wait(lambda: (run / "checkpoints" / "step_000000001").is_dir(), proc, "the checkpoint of step 1")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = _finish(proc, expect=130)
    _no_traceback(err)
    assert "Ctrl-C: stopping after this step (Ctrl-C again to stop now)" in err
    assert "stopped at once by a second Ctrl-C; the newest checkpoint" in err and "checkpoint saved in" not in err
    saved = checkpoint_dirs(run / "checkpoints")
    assert saved and all(load_checkpoint(path)[2]["step"] == step for step, path in saved)
    assert [p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith("step_")] == []
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "stopped at once" and [s["status"] for s in record["segments"]] == ["stopped at once"]
    _, err = _finish(_start(run, *steps))  # resumes from what was kept
    assert f"resumed from {saved[-1][1]}" in err


def _signal_on_call(trainer, attr: str, when) -> None:
    """`trainer.unit.<attr>` as it was, but a real SIGINT to this process on the calls `when(n)` picks."""
    real, calls = getattr(trainer.unit, attr), [0]

    def call(*args, **kwargs):
        calls[0] += 1
        if when(calls[0]):
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    setattr(trainer.unit, attr, call)


ACCUM = ["trainer.grad_accum_steps=4", "data.batch_size=4", "trainer.max_steps=6", "trainer.checkpoint_every_steps=100"]


def test_ctrl_c_between_micro_batches_undoes_the_step_and_resumes_bitwise(tmp_path):
    _trainer(tmp_path / "straight", *ACCUM).run()
    stopped = _trainer(tmp_path / "stopped", *ACCUM)
    _signal_on_call(stopped, "loss", lambda n: n == 4 * 2 + 2)  # step 3, its second micro-batch
    with pytest.raises(TrainingInterrupted, match=r"at step 2 \(step 3 was cut short after 2 of 4 micro-batches and "
                                                  r"will be redone\); checkpoint saved in .*step_000000002;"):
        stopped.run()
    assert [step for step, _ in checkpoint_dirs(tmp_path / "stopped" / "run" / "checkpoints")] == [2]
    _trainer(tmp_path / "stopped", *ACCUM).run()
    _same_weights(tmp_path / "straight" / "run", tmp_path / "stopped" / "run")
    assert _train_steps(tmp_path / "stopped" / "run") == list(range(1, 7))


EVAL = ["trainer.max_steps=4", "trainer.eval_every_steps=2", "trainer.keep_best=true",
        "trainer.best_metric=val_token_accuracy", "data.eval_batch_size=4"]


def _val(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "val"]


def test_ctrl_c_in_an_evaluation_stops_it_and_the_resumed_run_evaluates_that_step_again(tmp_path):
    _trainer(tmp_path / "straight", *EVAL).run()
    stopped = _trainer(tmp_path / "stopped", *EVAL)
    _signal_on_call(stopped, "predict", lambda n: n == 2)  # the evaluation at step 2, its second batch
    with pytest.raises(TrainingInterrupted, match=r"at step 2; checkpoint saved in .*step_000000002;"):
        stopped.run()
    run = tmp_path / "stopped" / "run"
    assert _val(run) == []
    _trainer(tmp_path / "stopped", *EVAL).run()
    _same_weights(tmp_path / "straight" / "run", run)
    straight = _val(tmp_path / "straight" / "run")
    drop = ("train_seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in _val(run)] == \
        [{k: v for k, v in r.items() if k not in drop} for r in straight]
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert best == json.loads((tmp_path / "straight" / "run" / "checkpoints" / "best.json").read_text())


def test_ctrl_c_in_the_final_evaluation_is_an_interruption_not_a_finished_run(tmp_path):
    stopped = _trainer(tmp_path / "stopped", "trainer.max_steps=2", "data.eval_batch_size=4")
    _signal_on_call(stopped, "predict", lambda n: n == 2)
    with pytest.raises(TrainingInterrupted, match=r"at step 2 \(the final evaluation was cut short\); checkpoint"):
        stopped.run()
    assert not (tmp_path / "stopped" / "run" / "model.safetensors").exists()


def test_ctrl_c_in_the_final_evaluation_exits_130_and_the_rerun_finishes(tmp_path):
    run = tmp_path / "run"
    steps = ["trainer.max_steps=2", "task.eval_size=100", "data.eval_batch_size=1"]  # a long final evaluation
    proc = _start(run, *steps)
    _wait(lambda: (run / "checkpoints" / "step_000000002").is_dir(), proc, "the last checkpoint")
    proc.send_signal(signal.SIGINT)
    _, err = _finish(proc, expect=130)
    _no_traceback(err)
    assert "stopped by SIGINT" in err
    if "after the run finished" not in err:  # the usual case: the evaluation was under way
        assert not (run / "model.safetensors").exists() and "run the same command again to resume" in err
    out, _ = _finish(_start(run, *steps))
    assert out.splitlines()[-1] == f"run dir: {run}" and (run / "model.safetensors").exists()


def test_ctrl_c_stops_a_comparison_with_exit_130_and_the_same_command_continues(tmp_path):
    out = tmp_path / "report"
    argv = ["--task", "star_easy", "--archs", "arlm_tiny", "--budget-steps", "200", "--eval-every-steps", "1000",
            "--test-limit", "4", "task.train_size=256", "task.eval_size=8", "data.batch_size=16",
            "trainer.progress_every_seconds=0",
            "trainer.tensorboard=false"]
    run = out / "runs" / "arlm_tiny_seed0"
    proc = _start(out, *argv, module="xlm.recipes.compare", base=[])
    _wait(lambda: len(_train_steps(run)) >= 2, proc, "step 2")
    proc.send_signal(signal.SIGINT)
    _, err = _finish(proc, expect=130)
    _no_traceback(err)
    assert "compare: run 1/1: arlm_tiny seed 0" in err
    assert "compare: stopped while training arlm_tiny (seed 0)" in err and "the same command continues" in err
    _, err = _finish(_start(out, *argv, module="xlm.recipes.compare", base=[]))
    assert f"resumed from {run / 'checkpoints'}" in err
    assert (out / "table.md").exists()


def test_the_first_ctrl_c_says_how_long_a_long_step_takes(tmp_path):
    eta = Eta()
    for seconds in (240.0, 50.0, 30.0, 30.0):
        eta.add_step(seconds)
    assert _trainer(tmp_path / "a")._stop_point(eta) == "after this step (steps take about 0:30)"
    assert _trainer(tmp_path / "a")._stop_point(Eta()) == "after this step"
    assert _trainer(tmp_path / "b", "trainer.grad_accum_steps=2")._stop_point(eta) == "after this micro-batch"
