"""Faults that must lose nothing: kill -9 at any moment (checkpoint writes included), NaN/Inf
losses (stop or skip, as configured), and activation checkpointing giving the same gradients."""

import hashlib
import json
import os
import random
import signal
import time

import pytest
import torch

import xlm
from xlm.data.tasks import build_task
from xlm.recipes.checkpoint import load_latest_checkpoint
from xlm.recipes.distributed import init_distributed
from xlm.recipes.train import resolve_config, parse_args, fit_model_to_task
from xlm.recipes.activation_checkpointing import checkpoint_activations
from xlm.recipes.config import ConfigError
from xlm.recipes.trainer import NonFiniteLossError, Trainer

from .test_resume_and_ddp import _finish, _logged_steps, _train, _weights


def _trainer(tmp_path, *overrides):
    argv = ["--arch", "arlm_tiny", "--task", "star_easy", "--experiment", "debug",
            "--output-dir", str(tmp_path / "run"),
            "trainer.progress_bar=false", "trainer.tensorboard=false", "trainer.eval_every_steps=0",
            "trainer.log_every_steps=1", *overrides]
    args = parse_args(argv)
    composed = resolve_config(args)
    task = build_task(composed.config.task)
    config = fit_model_to_task(composed, task)
    return Trainer(config, xlm.get_family("arlm"), task, init_distributed("cpu"))


def _nan_at(trainer, bad_steps):
    """The real loss, except NaN on the optimizer steps in `bad_steps` (fault injection)."""
    real = trainer.unit.loss

    def loss(model, batch):
        out = real(model, batch)
        if trainer.step + 1 in bad_steps:
            out = {**out, "loss": out["loss"] * float("nan")}
        return out

    trainer.unit.loss = loss


def _digest(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_nan_stops_the_run_naming_the_step_and_keeps_every_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, "trainer.max_steps=8", "trainer.checkpoint_every_steps=2")
    _nan_at(trainer, {5})
    saved = {}
    real_save = trainer._save

    def save():
        real_save()
        saved.update(_digest(trainer.checkpoint_dir))

    trainer._save = save
    with pytest.raises(NonFiniteLossError, match=r"at step 5 \(data epoch 0, batch 4, rows \["):
        trainer.run()
    assert _digest(trainer.checkpoint_dir) == saved  # nothing written or overwritten after the fault
    assert sorted(p.name for p in trainer.checkpoint_dir.iterdir()) == ["step_000000002", "step_000000004"]
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_nan_steps_are_skipped_when_configured(tmp_path, capsys):
    trainer = _trainer(tmp_path, "trainer.max_steps=6", "trainer.checkpoint_every_steps=6", "trainer.on_nonfinite=skip")
    _nan_at(trainer, {3})
    before = {}

    real_step = trainer._train_step

    def step():
        if trainer.step == 2:
            before.update({k: v.clone() for k, v in trainer.model.state_dict().items()})
        out = real_step()
        if trainer.step == 3:
            assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())  # no update
        return out

    trainer._train_step = step
    trainer.run()
    assert "skipped the update at step 3" in capsys.readouterr().err
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("skipped")] == [3]
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())


def test_too_many_skips_in_a_row_stop(tmp_path):
    trainer = _trainer(tmp_path, "trainer.max_steps=8", "trainer.on_nonfinite=skip", "trainer.max_skipped_steps=2")
    _nan_at(trainer, {2, 3, 4, 5})
    with pytest.raises(NonFiniteLossError, match="at step 4"):
        trainer.run()


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = xlm.create_model("arlm_tiny", vocab_size=40)
    torch.manual_seed(0)
    checkpointed = xlm.create_model("arlm_tiny", vocab_size=40)
    assert checkpoint_activations(checkpointed) == 2
    assert plain.state_dict().keys() == checkpointed.state_dict().keys()
    ids = torch.randint(0, 40, (3, 12))
    for model in (plain, checkpointed):
        model(ids).logsumexp(-1).sum().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name
    with pytest.raises(ConfigError, match="no `layers` or `blocks`"):
        checkpoint_activations(torch.nn.Linear(2, 2))


def _kill_minus_nine_run(tmp_path, kills: int, steps: int):
    args = [f"trainer.max_steps={steps}", "trainer.checkpoint_every_steps=1", "trainer.keep_last_checkpoints=2",
            "data.batch_size=16"]
    _finish(_train(tmp_path / "straight", *args))
    run = tmp_path / "killed"
    rng = random.Random(0)
    for _ in range(kills):
        proc = _train(run, *args)
        start = _logged_steps(run)
        deadline = time.time() + 120
        while _logged_steps(run) < start + 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))  # somewhere in the next steps, checkpoint writes included
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        checkpoints = run / "checkpoints"
        latest = load_latest_checkpoint(checkpoints)  # always something complete to resume from
        assert latest is not None
        leftovers = [p.name for p in checkpoints.iterdir() if not p.name.startswith("step_")]
        assert all(name.startswith(".") for name in leftovers)  # half-written dirs are hidden temp dirs
    _finish(_train(run, *args))
    straight, resumed = _weights(tmp_path / "straight"), _weights(run)
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_kill_minus_nine_anywhere_resumes_to_the_same_weights(tmp_path):
    _kill_minus_nine_run(tmp_path, kills=2, steps=40)


@pytest.mark.slow
def test_kill_minus_nine_many_times(tmp_path):
    _kill_minus_nine_run(tmp_path, kills=10, steps=150)
