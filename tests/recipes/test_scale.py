"""Scale: runs stopped mid-way under torchrun resume to the same weights (DDP and FSDP2 on 2 gloo
processes), FSDP2 equals one process on the same global batch, and a streaming text run stopped
with SIGTERM resumes bitwise."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

import xlm
from xlm.data.corpora import pydoc_paragraphs

from .test_resume_and_ddp import BASE, _finish, _logged_steps, _train, _train_records, _weights

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m"]


def _wait_for_step(run: Path, proc: subprocess.Popen, step: int) -> None:
    deadline = time.time() + 300
    while _logged_steps(run) < step and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be stopped"


def _descendants(pid: int) -> list[int]:
    """Every live process below `pid` (torchrun starts each worker in a session of its own)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_ddp_run_stopped_under_torchrun_resumes_to_the_same_weights(tmp_path):
    """SIGTERM to the torchrun launcher: it forwards the signal, both ranks agree to stop, save one
    checkpoint and exit; the same command resumes to bitwise the weights of an uninterrupted run."""
    steps = ["trainer.max_steps=30", "trainer.checkpoint_every_steps=1000", "data.batch_size=8",
             "trainer.device=cpu", "trainer.grad_accum_steps=2"]
    _finish(_train(tmp_path / "straight", *steps, launcher=TORCHRUN))

    run = tmp_path / "stopped"
    proc = _train(run, *steps, launcher=TORCHRUN)
    _wait_for_step(run, proc, 3)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=300)
    assert proc.returncode != 0
    stopped_at = _logged_steps(run)
    assert 3 <= stopped_at < 30 and not (run / "model.safetensors").exists()
    assert [p.name for p in (run / "checkpoints").iterdir()] == [f"step_{stopped_at:09d}"]

    _finish(_train(run, *steps, launcher=TORCHRUN))
    _assert_same_weights(tmp_path / "straight", run)
    logged = [r["step"] for r in _train_records(run)]
    assert logged == list(range(1, 31))


def test_fsdp_two_gloo_processes_match_one_process_on_the_same_global_batch(tmp_path):
    """FSDP2 (fully_shard per block + root, no gradient sync on the inner accumulation step) on 2 gloo
    processes against one process: same losses, gradient norms and weights (fp32, atol 2e-6)."""
    steps = ["trainer.max_steps=4", "data.batch_size=8", "trainer.device=cpu", "trainer.grad_accum_steps=2"]
    _finish(_train(tmp_path / "single", *steps))
    _finish(_train(tmp_path / "fsdp", *steps, "trainer.parallelism=fsdp", launcher=TORCHRUN))
    for a, b in zip(_train_records(tmp_path / "single"), _train_records(tmp_path / "fsdp"), strict=True):
        assert a["step"] == b["step"] and a["tokens"] == b["tokens"]
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-5 * a["grad_norm"]
    single, fsdp = _weights(tmp_path / "single"), _weights(tmp_path / "fsdp")
    assert single.keys() == fsdp.keys()
    diff = max(float((single[k] - fsdp[k]).abs().max()) for k in single)
    print(f"FSDP (2 gloo processes) vs 1 process: max |weight difference| = {diff:.3g}")
    for key in single:
        torch.testing.assert_close(fsdp[key], single[key], rtol=0, atol=2e-6, msg=key)
    torch.manual_seed(0)
    init = xlm.create_model("arlm_tiny", vocab_size=27).state_dict()
    assert any(not torch.allclose(init[k], single[k]) for k in single)  # training moved the weights
    # sharded checkpoints: one DCP dir with a shard file per rank, plus the trainer state
    last = sorted((tmp_path / "fsdp" / "checkpoints").iterdir())[-1]
    assert sorted(p.name for p in last.iterdir()) == ["dcp", "trainer_state.pt"]
    assert sorted(p.name for p in (last / "dcp").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert xlm.load_model(tmp_path / "fsdp") is not None  # the consolidated export loads as any run dir
    # the sharded checkpoint resumes in one process (DCP reshards it) and goes on like the single run
    more = [*steps[1:], "trainer.max_steps=6"]
    _finish(_train(tmp_path / "single", *more))
    _finish(_train(tmp_path / "fsdp", *more))
    single, fsdp = _weights(tmp_path / "single"), _weights(tmp_path / "fsdp")
    for key in single:
        torch.testing.assert_close(fsdp[key], single[key], rtol=0, atol=2e-6, msg=key)


def test_fsdp_run_killed_under_torchrun_resumes_to_the_same_weights(tmp_path):
    """SIGKILL of the launcher and both ranks at once, mid-run (checkpoint writes included):
    the newest complete sharded checkpoint resumes to bitwise the weights of an uninterrupted run.
    With bf16 compute (MixedPrecisionPolicy), an EMA, activation checkpointing and accumulation."""
    steps = ["trainer.max_steps=20", "trainer.checkpoint_every_steps=1", "trainer.keep_last_checkpoints=2",
             "data.batch_size=8", "trainer.device=cpu", "trainer.grad_accum_steps=2", "trainer.parallelism=fsdp",
             "trainer.fsdp_param_dtype=bf16", "trainer.ema_decay=0.9", "trainer.activation_checkpointing=true"]
    _finish(_train(tmp_path / "straight", *steps, launcher=TORCHRUN))

    run = tmp_path / "killed"
    cmd = TORCHRUN + ["xlm.recipes.train", *BASE, "--output-dir", str(run), *steps]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    _wait_for_step(run, proc, 4)
    for pid in [proc.pid, *_descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)
    killed_at = _logged_steps(run)
    assert 4 <= killed_at < 20 and not (run / "model.safetensors").exists()
    complete = [p for p in (run / "checkpoints").iterdir() if p.name.startswith("step_")]
    assert complete and all((p / "trainer_state.pt").exists() for p in complete)

    _finish(_train(run, *steps, launcher=TORCHRUN))
    _assert_same_weights(tmp_path / "straight", run)
    assert len([p for p in (run / "checkpoints").iterdir() if p.name.startswith("step_")]) == 2  # keep_last


def _shards(directory: Path, count: int) -> str:
    paragraphs = pydoc_paragraphs()
    per = len(paragraphs) // count
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (directory / f"part-{i:02d}.jsonl").write_text(
            "".join(json.dumps({"text": p}) + "\n" for p in paragraphs[i * per : (i + 1) * per]))
    return str(directory / "part-*.jsonl")


def test_streaming_run_stopped_with_sigterm_resumes_bitwise(tmp_path):
    """task.streaming=true over 6 local .jsonl shards: the per-rank stream position (shard, document,
    packing buffer) is saved with the checkpoint, so stop + resume == uninterrupted, bitwise."""
    corpus = _shards(tmp_path / "corpus", 6)
    steps = ["--task", "text", f"task.data_files={corpus}", "task.streaming=true", "task.tokenizer_vocab_size=300",
             "task.block_size=32", "task.eval_size=8", "task.streaming_eval_documents=50", "trainer.max_steps=80",
             "trainer.checkpoint_every_steps=1000", "data.batch_size=8"]
    _finish(_train(tmp_path / "straight", *steps))

    run = tmp_path / "stopped"
    proc = _train(run, *steps)
    _wait_for_step(run, proc, 3)
    proc.send_signal(signal.SIGTERM)
    err = _finish(proc, expect=128 + signal.SIGTERM)
    assert "run the same command again to resume" in err
    stopped_at = _logged_steps(run)
    assert 3 <= stopped_at < 80
    state = torch.load(run / "checkpoints" / f"step_{stopped_at:09d}" / "trainer_state.pt", weights_only=True)
    (position,) = state["data_position"]["ranks"][0]["positions"]
    assert position["doc"] > 0 and position["rows"] == 8 * stopped_at  # 8 rows a step, none lost or repeated

    _finish(_train(run, *steps))
    _assert_same_weights(tmp_path / "straight", run)
    assert [r["step"] for r in _train_records(run)] == list(range(1, 81))
