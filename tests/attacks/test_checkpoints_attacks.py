"""Attacks on the checkpoints a run keeps (issue #28, failure 4 and the checkpoint parts of 7), each
reproduced through the train command as a user runs it, with real files, real signals and real
failed writes:

- pruning kept unreadable checkpoints numbered after the resumed step, deleted the one just written,
  and the SIGTERM message promised it;
- a learning rate of 50 diverged while staying finite, and pruning kept only garbage;
- a kill -9 in the middle of a checkpoint write left its temp dir forever;
- a full disk said `RuntimeError: [enforce fail at inline_container.cc:672]` (or safetensors' error).
"""

import hashlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from xlm.recipes import train
from xlm.recipes.trainer import Trainer

DEBUG = ["--arch", "arlm_tiny", "--task", "star_easy", "--experiment", "debug", "trainer.progress_bar=false",
         "trainer.tensorboard=false", "trainer.log_every_steps=1"]


def _checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def _largest_weight(checkpoint: Path) -> float:
    return max(float(v.abs().max()) for v in load_file(checkpoint / "model.safetensors").values())


def _train_losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def _command(run: Path, *extra: str, prelude: str = "", limit_file_size: int | None = None):
    """`xlm.recipes.train` in a fresh process, after `prelude` (fault injection) and under a file size limit."""
    code = f"{prelude}\nimport sys\nfrom xlm.recipes import train\nsys.exit(train.main(sys.argv[1:]))"

    def limit() -> None:
        if limit_file_size is not None:  # writes past it fail with EFBIG, as a full disk fails them with ENOSPC
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    return subprocess.run([sys.executable, "-c", code, *DEBUG, "--output-dir", str(run), *extra],
                          capture_output=True, text=True, timeout=600, preexec_fn=limit,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_pruning_after_a_resume_keeps_the_checkpoint_just_written_and_sigterm_names_it(tmp_path, monkeypatch,
                                                                                      capsys):
    """Before: the newest readable checkpoint and the one SIGTERM saved were deleted (steps 6 and 8, unreadable
    and ahead of the run, were kept) while the message said a checkpoint was saved. After: both are kept, the
    message names the saved one, and the run resumes from it."""
    run = tmp_path / "run"
    steps = ["trainer.max_steps=8", "trainer.checkpoint_every_steps=2"]
    assert train.main([*DEBUG, "--output-dir", str(run), *steps, "trainer.keep_last_checkpoints=0"]) == 0
    for step in (6, 8):  # the newest checkpoints lost their data (a disk fault, a partial copy)
        weights = run / "checkpoints" / f"step_{step:09d}" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    real_step = Trainer._train_step

    def step_then_sigterm_at_5(self):
        out = real_step(self)
        if self.step == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Trainer, "_train_step", step_then_sigterm_at_5)
    capsys.readouterr()
    assert train.main([*DEBUG, "--output-dir", str(run), *steps, "trainer.max_steps=10"]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert re.search("^warning: skipping checkpoint at step 8: ", err, re.MULTILINE)  # as a command prints xlm's
    said = re.search(r"checkpoint saved in (\S+);", err)
    assert said and Path(said.group(1)) == run / "checkpoints" / "step_000000005"
    assert load_file(Path(said.group(1)) / "model.safetensors")
    assert _checkpoints(run) == ["step_000000004", "step_000000005", "step_000000006", "step_000000008"]
    monkeypatch.undo()
    assert train.main([*DEBUG, "--output-dir", str(run), *steps, "trainer.max_steps=10"]) == 0
    out = capsys.readouterr()
    assert f"resumed from {run / 'checkpoints' / 'step_000000005'} (step 5)" in out.out
    assert re.search("^warning: skipping checkpoint at step 8: ", out.err, re.MULTILINE)


def test_a_learning_rate_of_50_stops_the_run_before_its_checkpoints_are_garbage(tmp_path):
    """Before: exit 0, a model exported, and the two kept checkpoints (steps 39, 40) hold weights up to 178
    and 184 (a clean run's largest: 1.0). After: the divergence guard stops the run at step 3 (exit 3, one
    line), nothing is exported, and the kept checkpoints are those of steps 1 and 2 (largest weights 1.5 and
    2.5). Their losses are already 3.5 times the first: at lr 50 the first update does the damage, and the
    message says that no checkpoint is from before the rise."""
    run = tmp_path / "run"
    done = _command(run, "optim.lr=50", "trainer.max_steps=40", "trainer.checkpoint_every_steps=1",
                    "trainer.keep_last_checkpoints=2")
    assert done.returncode == 3, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "training diverged at step 3" in errors[0] and "Traceback" not in done.stderr
    assert not (run / "model.safetensors").exists()
    assert _checkpoints(run) == ["step_000000001", "step_000000002"]
    assert all(_largest_weight(run / "checkpoints" / name) < 10 for name in _checkpoints(run))
    assert "no checkpoint in" in errors[0] and "is from before the loss rose" in errors[0]


def test_a_divergence_after_good_steps_keeps_a_good_checkpoint(tmp_path):
    """optim.lr=50 reached through a long warmup: the loss holds for ~80 steps, then climbs. Before: exit 0,
    and the kept checkpoints are steps 119 and 120, whose weights give a loss of 30.9 (the first step's: 3.15).
    After: the run stops at step 95 (exit 3), and step 87, which the message names as the newest from before
    the rise, is kept beside the last two: its weights gave 4.48."""
    run = tmp_path / "run"
    done = _command(run, "optim.lr=50", "optim.warmup_steps=5000", "trainer.max_steps=120",
                    "trainer.checkpoint_every_steps=1", "trainer.keep_last_checkpoints=2")
    assert done.returncode == 3, done.stderr
    named = re.search(r"(step_\d{9}) is the newest checkpoint from before the loss rose \(kept\)", done.stderr)
    assert named, done.stderr
    losses = _train_losses(run)
    good = int(named.group(1).removeprefix("step_"))
    assert named.group(1) in _checkpoints(run) and losses[good + 1] < 2 * losses[1]  # its weights gave that loss
    assert max(losses.values()) > 3 * losses[1]  # and the run had diverged


PRELUDE_KILL_IN_WRITE = """
import os, signal, torch
real_save = torch.save
def save(obj, f, *args, **kwargs):  # kill -9 while step 3's checkpoint is half written
    path = str(f) if isinstance(f, (str, os.PathLike)) else str(getattr(f, "name", ""))
    if path.endswith("trainer_state.pt") and ".step_000000003.tmp-" in path:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
"""


def test_a_kill_in_the_middle_of_a_checkpoint_write_leaves_nothing_behind_once_resumed(tmp_path):
    """Before: `.step_000000003.tmp-*` (half a checkpoint) stays in checkpoints/ for good. After: the
    resumed run removes it, says so, and finishes."""
    run = tmp_path / "run"
    steps = ["trainer.max_steps=5", "trainer.checkpoint_every_steps=1"]
    killed = _command(run, *steps, prelude=PRELUDE_KILL_IN_WRITE)
    assert killed.returncode == -signal.SIGKILL
    assert [n for n in _checkpoints(run) if n.startswith(".step_000000003.tmp-")]  # the half-written checkpoint
    resumed = _command(run, *steps)
    assert resumed.returncode == 0, resumed.stderr
    assert "removed .step_000000003.tmp-" in resumed.stderr
    assert _checkpoints(run) == ["step_000000004", "step_000000005"]


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize(("limit", "failing"), [(120_000, "trainer_state.pt"), (40_000, "model.safetensors")])
def test_a_full_disk_is_one_line_naming_the_file_and_the_last_checkpoint_is_untouched(tmp_path, limit, failing):
    """Before: exit 1 and a traceback ending in `RuntimeError: [enforce fail at inline_container.cc:672]`
    (torch) or `SafetensorError: Error while serializing` (safetensors). After: exit 2, one line
    `error: disk full while writing .../step_000000004/<file> (File too large); ...`, step 2 unchanged and
    nothing half-written left."""
    run = tmp_path / "run"
    assert _command(run, "trainer.max_steps=2").returncode == 0
    before = _digest(run / "checkpoints" / "step_000000002")
    full = _command(run, "trainer.max_steps=4", limit_file_size=limit)
    assert full.returncode == 2, full.stderr
    assert "Traceback" not in full.stderr and "enforce fail" not in full.stderr
    errors = [line for line in full.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert errors[0].startswith(f"error: disk full while writing {run / 'checkpoints' / 'step_000000004' / failing} "
                                f"(File too large)")
    assert _checkpoints(run) == ["step_000000002"]
    assert _digest(run / "checkpoints" / "step_000000002") == before
