"""Trainer options beyond the defaults: EMA export, autocast, compile, and the `xlm` command."""

import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import xlm
from xlm.data.tasks import build_task
from xlm.nn.cpu.fused_qkv import FusedQkvAttention
from xlm.nn.cpu.gelu_tanh import CompiledGeluFeedForward
from xlm.recipes import train
from xlm.recipes.distributed import init_distributed
from xlm.recipes.trainer import Trainer

DEBUG = ["--arch", "arlm_tiny", "--task", "star_easy", "--experiment", "debug", "trainer.progress_bar=false",
         "trainer.tensorboard=false"]


def _run(tmp_path, *extra):
    out = tmp_path / "run"
    assert train.main([*DEBUG, "--output-dir", str(out), *extra]) == 0
    return out


def _checkpoint(run):
    return sorted((run / "checkpoints").iterdir())[-1]


def test_ema_weights_are_what_gets_exported(tmp_path):
    run = _run(tmp_path, "trainer.ema_decay=0.5")
    exported = load_file(run / "model.safetensors")
    last = _checkpoint(run)
    ema, raw = load_file(last / "ema.safetensors"), load_file(last / "model.safetensors")
    for key, value in exported.items():
        assert torch.equal(value, ema[key].to(value.dtype)), key
    assert any(not torch.equal(exported[k], raw[k]) for k in exported)


def test_bf16_autocast_trains_with_finite_losses(tmp_path):
    run = _run(tmp_path, "trainer.autocast_dtype=bf16")
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["split"] == "train"]
    assert losses and all(math.isfinite(x) for x in losses)
    assert all(v.dtype == torch.float32 for v in load_file(run / "model.safetensors").values())


def test_resume_false_refuses_to_overwrite_checkpoints(tmp_path, capsys):
    _run(tmp_path)
    capsys.readouterr()
    assert train.main([*DEBUG, "--output-dir", str(tmp_path / "run"), "trainer.resume=false"]) == 2
    assert "already has checkpoints and trainer.resume=false" in capsys.readouterr().err


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    eager = _run(tmp_path / "eager")
    compiled = _run(tmp_path / "compiled", "trainer.compile=true")
    a, b = load_file(eager / "model.safetensors"), load_file(compiled / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def _trainer(out, *overrides) -> Trainer:
    args = train.parse_args([*DEBUG, "--output-dir", str(out), *overrides])
    composed = train.resolve_config(args)
    task = build_task(composed.config.task)
    return Trainer(train.fit_model_to_task(composed, task), xlm.get_family("arlm"), task,
                   init_distributed("cpu"))


def test_cpu_kernels_are_applied_to_the_trained_model_and_false_trains_the_model_code_alike(tmp_path):
    accelerated = {FusedQkvAttention, CompiledGeluFeedForward}
    fast = _trainer(tmp_path / "fast", "model.activation=gelu_tanh")
    plain = _trainer(tmp_path / "plain", "model.activation=gelu_tanh", "trainer.cpu_kernels=false")
    assert {type(m) for m in fast.model.modules()} >= accelerated
    plain.run()
    assert not {type(m) for m in plain.model.modules()} & accelerated
    fast.run()
    a, b = load_file(tmp_path / "plain" / "model.safetensors"), load_file(tmp_path / "fast" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_xlm_command_dispatches_to_the_recipes():
    models = subprocess.run([sys.executable, "-m", "xlm.cli", "models"], capture_output=True, text=True)
    assert models.returncode == 0 and "arlm" in models.stdout and "arlm_star" in models.stdout
    dump = subprocess.run([sys.executable, "-m", "xlm.cli", "train", "--arch", "arlm_star", "--dump-config"],
                          capture_output=True, text=True)
    assert dump.returncode == 0 and "max_steps: 2500" in dump.stdout
    bad = subprocess.run([sys.executable, "-m", "xlm.cli", "trian"], capture_output=True, text=True)
    assert bad.returncode == 2 and "did you mean 'train'" in bad.stderr
