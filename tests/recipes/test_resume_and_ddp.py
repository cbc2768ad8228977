"""Exact resume after SIGTERM, and 2-process gloo DDP against one process on the same global batch."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

import xlm

BASE = ["--arch", "arlm_tiny", "--task", "star_easy", "--experiment", "debug",
        "task.train_size=2048", "trainer.eval_every_steps=0", "trainer.progress_bar=false",
        "trainer.tensorboard=false", "trainer.log_every_steps=1", "optim.warmup_steps=2"]


def _train(out: Path, *extra: str, launcher: list[str] | None = None) -> subprocess.Popen:
    cmd = (launcher or [sys.executable, "-m"]) + ["xlm.recipes.train", *BASE, "--output-dir", str(out), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _finish(proc: subprocess.Popen, expect: int = 0) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == expect, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    return err


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model.safetensors")


def _train_records(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in lines if r["split"] == "train"]


def _logged_steps(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return max((r["step"] for r in lines if r["split"] == "train"), default=0)


def test_sigterm_then_resume_gives_bitwise_the_same_weights(tmp_path):
    steps = ["trainer.max_steps=150", "trainer.checkpoint_every_steps=1000", "data.batch_size=16"]
    _finish(_train(tmp_path / "straight", *steps))

    proc = _train(tmp_path / "interrupted", *steps)
    deadline = time.time() + 300
    while _logged_steps(tmp_path / "interrupted") < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    err = _finish(proc, expect=128 + signal.SIGTERM)
    assert "run the same command again to resume" in err
    stopped_at = _logged_steps(tmp_path / "interrupted")
    assert 3 <= stopped_at < 150, "the run must have been stopped mid-way"
    assert not (tmp_path / "interrupted" / "model.safetensors").exists()

    err = _finish(_train(tmp_path / "interrupted", *steps))
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "interrupted")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    logged = [json.loads(line)["step"] for line in (tmp_path / "interrupted" / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["split"] == "train"]
    assert logged == sorted(set(logged)) and logged[-1] == 150  # no step logged twice after the resume


def test_two_gloo_processes_match_one_process_on_the_same_global_batch(tmp_path):
    steps = ["trainer.max_steps=3", "data.batch_size=8", "trainer.device=cpu"]
    _finish(_train(tmp_path / "single", *steps))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                "--nproc_per_node=2", "-m"]
    _finish(_train(tmp_path / "ddp", *steps, launcher=torchrun))
    single, ddp = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    # Adam hides a wrong gradient scale in the weights; the logged loss and gradient norm do not
    for a, b in zip(_train_records(tmp_path / "single"), _train_records(tmp_path / "ddp"), strict=True):
        assert a["step"] == b["step"] and a["tokens"] == b["tokens"]
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-5 * a["grad_norm"]
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=0, atol=2e-6, msg=key)
    # and training moved the weights (the comparison is not between two untouched inits)
    torch.manual_seed(0)
    init = xlm.create_model("arlm_tiny", vocab_size=27).state_dict()
    assert any(not torch.allclose(init[k], single[k]) for k in single)


def test_a_fine_tune_runs_under_two_gloo_processes_from_the_sources_weights(tmp_path):
    """init_from under torchrun: the ranks train from the source's weights (optim.lr=0: they end where it was)."""
    _finish(_train(tmp_path / "base", "trainer.max_steps=20", "data.batch_size=8"))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                "--nproc_per_node=2", "-m"]
    err = _finish(_train(tmp_path / "ddp", "trainer.max_steps=2", "data.batch_size=8", "trainer.device=cpu",
                         "optim.lr=0", f"init_from={tmp_path / 'base'}", launcher=torchrun))
    assert f"starting from the weights of {tmp_path / 'base'}" in err
    base, ddp = _weights(tmp_path / "base"), _weights(tmp_path / "ddp")
    assert base.keys() == ddp.keys() and all(torch.equal(base[k], ddp[k]) for k in base)
