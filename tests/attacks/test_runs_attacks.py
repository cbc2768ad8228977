"""Attacks on a run dir (issue 28, failures 2 and 3): two runs started at once into one dir, a run
killed with kill -9 and rerun, torchrun into a locked dir, and resumes with changed settings; with
Hypothesis over the lock file's contents and over the config a checkpoint keeps."""

import dataclasses
import hashlib
import json
import os
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from xlm.recipes import train
from xlm.recipes.checkpoint import CheckpointError
from xlm.recipes.resume_changes import FREE_KEYS, ResumeConfigError, check_resume_config, recorded_config
from xlm.recipes.run_lock import LOCK_FILE, RunDirLock, RunDirLockedError

BASE = ["--arch", "arlm_tiny", "--task", "star_easy", "--experiment", "debug", "trainer.progress_bar=false",
        "trainer.tensorboard=false", "trainer.eval_every_steps=0", "trainer.log_every_steps=1", "optim.lr=2e-3"]
LONG = ["trainer.max_steps=300", "trainer.checkpoint_every_steps=1"]  # long enough to be caught mid-run
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m"]
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _start(run: Path, *extra: str, launcher: list[str] | None = None) -> subprocess.Popen:
    cmd = (launcher or [sys.executable, "-m"]) + ["xlm.recipes.train", *BASE, "--output-dir", str(run), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _finish(proc: subprocess.Popen, expect: int = 0) -> tuple[str, str]:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == expect, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    return out, err


def _records(run: Path, split: str = "train") -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in lines if r["split"] == split]


def _complete_lines(path: Path) -> int:
    """Lines written so far (a line being appended is not counted)."""
    return path.read_text().count("\n") if path.exists() else 0


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model.safetensors")


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def _digest(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """The long run of one seed, trained alone (each seed once per module)."""
    runs: dict[int, Path] = {}

    def get(seed: int) -> Path:
        if seed not in runs:
            runs[seed] = tmp_path_factory.mktemp(f"clean_seed{seed}") / "run"
            _finish(_start(runs[seed], *LONG, f"seed={seed}"))
        return runs[seed]

    return get


# ---------------------------------------------------------------- one writer per run dir


def test_two_runs_started_at_once_into_one_dir_one_trains_the_other_is_refused_at_once(tmp_path, clean_run):
    """Before: both exited 0, one "resumed" from the other's checkpoint, metrics.jsonl interleaved both
    and the weights matched neither clean run (or one died of `Directory not empty`)."""
    run = tmp_path / "shared"
    procs = {seed: _start(run, *LONG, f"seed={seed}") for seed in (3, 5)}
    ended: dict[int, float] = {}
    deadline = time.time() + 600
    while len(ended) < 2 and time.time() < deadline:
        ended.update({seed: time.time() for seed, p in procs.items() if seed not in ended and p.poll() is not None})
        time.sleep(0.01)
    outputs = {seed: p.communicate(timeout=60) for seed, p in procs.items()}
    codes = {seed: p.returncode for seed, p in procs.items()}
    assert sorted(codes.values()) == [0, 2], (codes, outputs)
    winner = next(seed for seed, code in codes.items() if code == 0)
    loser = 8 - winner
    line = _error_line(outputs[loser][1])
    assert f"{run} is in use by another training run (pid {procs[winner].pid} on host {socket.gethostname()} since " \
           in line
    assert ended[loser] < ended[winner]  # refused at once, while the other was still training
    # the run dir holds the winner's run alone, as if it had been alone
    clean = clean_run(winner)
    assert [(r["step"], r["loss"]) for r in _records(run)] == [(r["step"], r["loss"]) for r in _records(clean)]
    assert [(s["pid"], s["resumed_from"]) for s in _history(run)] == [(procs[winner].pid, None)]
    _assert_same_weights(_weights(run), _weights(clean))
    assert (run / LOCK_FILE).read_text() == ""  # released cleanly


def test_a_run_killed_with_kill_9_leaves_a_stale_lock_that_the_rerun_takes_over(tmp_path, clean_run):
    run = tmp_path / "killed"
    proc = _start(run, *LONG, "seed=3")
    deadline = time.time() + 300
    while _complete_lines(run / "metrics.jsonl") < 5:
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    left = json.loads((run / LOCK_FILE).read_text())
    assert left["pid"] == proc.pid and left["host"] == socket.gethostname()

    out, err = _finish(_start(run, *LONG, "seed=3"))
    assert f"the lock {run / LOCK_FILE} was stale (left by pid {proc.pid} on host {socket.gethostname()} since " in err
    assert "which is no longer running); taken over" in err
    assert "resumed from" in out
    _assert_same_weights(_weights(run), _weights(clean_run(3)))
    assert [s["resumed_from"] is None for s in _history(run)] == [True, False]


def test_torchrun_into_a_locked_dir_exits_2_on_every_rank_without_waiting(tmp_path):
    """Only rank 0 takes the lock; the other ranks hear that it could not, instead of waiting in a
    collective for a rank that has left."""
    run = tmp_path / "run"
    lock = RunDirLock.acquire(run)
    try:
        started = time.time()
        proc = _start(run, "trainer.device=cpu", launcher=TORCHRUN)
        out, err = proc.communicate(timeout=300)
        took = time.time() - started
    finally:
        lock.release()
    assert proc.returncode != 0 and "exitcode  : 2" in err, err
    assert f"in use by another training run (pid {os.getpid()} on host {socket.gethostname()}" in err
    assert "rank 0 could not lock" in err
    assert "RunDirLockedError" not in err  # no worker traceback
    assert not (run / "metrics.jsonl").exists() and not (run / "history.jsonl").exists()
    print(f"torchrun (2 ranks) into a locked run dir exited in {took:.1f} s")


def test_the_lock_is_exclusive_in_one_process_and_never_follows_a_symlink(tmp_path):
    first = RunDirLock.acquire(tmp_path / "run")
    with pytest.raises(RunDirLockedError, match=rf"in use by another training run \(pid {os.getpid()} on host "):
        RunDirLock.acquire(tmp_path / "run")
    first.release()
    RunDirLock.acquire(tmp_path / "run").release()  # free again once released
    important = tmp_path / "important.txt"
    important.write_text("keep me")
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / LOCK_FILE).symlink_to(important)
    with pytest.raises(RunDirLockedError, match="it is a symlink"):
        RunDirLock.acquire(tmp_path / "linked")
    assert important.read_text() == "keep me"


@FUZZ
@given(st.binary(max_size=200))
def test_any_lock_file_contents_are_taken_over_and_named_only_when_they_name_a_holder(contents):
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        (run / LOCK_FILE).write_bytes(contents)
        lock = RunDirLock.acquire(run)
        try:
            assert lock.left_by is None or set(lock.left_by) == {"pid", "host", "since"}
            holder = json.loads((run / LOCK_FILE).read_text())
            assert holder["pid"] == os.getpid()
        finally:
            lock.release()
        assert (run / LOCK_FILE).read_bytes() == b""


# ---------------------------------------------------------------- resume checks the config


@pytest.fixture
def finished(tmp_path, capsys):
    """A finished 4-step run (debug experiment, optim.lr=2e-3) and its args."""
    args = [*BASE, "--output-dir", str(tmp_path / "run")]
    assert train.main(args) == 0
    capsys.readouterr()
    return tmp_path / "run", args


@pytest.mark.parametrize("override, listed", [
    ("optim.lr=1e6", "optim.lr: 0.002 -> 1000000.0"),
    ("seed=5", "seed: 0 -> 5"),
    ("data.batch_size=4", "data.batch_size: 8 -> 4"),
    ("optim.schedule=constant", "optim.schedule: 'cosine' -> 'constant'"),
    ("task.train_size=128", "task.train_size: 256 -> 128"),
    ("trainer.max_steps=2", "trainer.max_steps: 4 -> 2"),
])
def test_resuming_with_a_setting_that_changes_the_result_is_refused_listing_it(finished, capsys, override, listed):
    """Before: optim.lr=1e6 exited 0 and config.json recorded 1e6 while the checkpoint's lr trained."""
    run, args = finished
    before = _digest(run)
    assert train.main([*args, override]) == 2
    line = _error_line(capsys.readouterr().err)
    assert listed in line and "trainer.resume_changes=" in line
    assert _digest(run) == before  # nothing trained, logged or rewritten


def test_an_allowed_change_trains_with_the_new_value_and_the_history_records_it(finished, capsys):
    run, args = finished
    assert train.main([*args, "optim.lr=1e6", "trainer.max_steps=5", "trainer.resume_changes=optim.lr"]) == 0
    assert "resumed from" in capsys.readouterr().out
    (step5,) = [r for r in _records(run) if r["step"] == 5]
    assert step5["lr"] == pytest.approx(1e6 * 6 / 100)  # the new lr, on the warmup ramp (not 0.002's)
    assert max(float(v.abs().max()) for v in _weights(run).values()) > 1000  # and it trained with it
    assert json.loads((run / "config.json").read_text())["train_config"]["optim"]["lr"] == 1e6
    first, second = _history(run)
    assert first["resumed_from"] is None and second["resumed_from"].endswith("step_000000004")
    assert second["resume_changes"] == "optim.lr" and second["step"] == 4
    assert {c["key"]: (c["before"], c["after"], c["changes_result"]) for c in second["changes"]} == {
        "optim.lr": (0.002, 1e6, True), "trainer.max_steps": (4, 5, False),
        "trainer.resume_changes": ("refuse", "optim.lr", False)}
    assert "optim.lr=1e6" in second["command"]


def test_a_changed_model_size_is_one_line_and_exit_2_never_a_size_mismatch_traceback(finished, capsys):
    """Before: a raw `size mismatch` RuntimeError traceback."""
    run, args = finished
    before = _digest(run)
    assert train.main([*args, "model.model_dim=64"]) == 2
    assert "model.model_dim: 32 -> 64" in _error_line(capsys.readouterr().err)
    assert train.main([*args, "model.model_dim=64", "trainer.resume_changes=allow"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "weights do not fit the model this config builds" in line
    assert "embed_tokens.weight (checkpoint (27, 32), this config's model (27, 64))" in line
    assert "size mismatch" not in line
    assert _digest(run) == before


def test_an_arch_of_another_family_cannot_continue_a_run_even_when_allowed(finished, capsys):
    """Before: the error suggested trainer.resume_changes=arch, which then failed on the weights."""
    run, args = finished
    before = _digest(run)
    other = [a if a != "arlm_tiny" else "mlm_tiny" for a in args]
    for allow in ([], ["trainer.resume_changes=arch"], ["trainer.resume_changes=allow"]):
        assert train.main([*other, *allow]) == 2
        line = _error_line(capsys.readouterr().err)
        assert "holds family arlm's arch 'arlm_tiny'; family mlm's 'mlm_tiny' cannot continue it" in line
        assert "rerun with --arch arlm_tiny" in line and "resume_changes=arch" not in line
    assert _digest(run) == before


def test_extending_max_steps_and_changing_free_settings_resume(finished, capsys):
    run, args = finished
    assert train.main([*args, "trainer.max_steps=6", "trainer.log_every_steps=2", "trainer.device=cpu"]) == 0
    assert f"resumed from {run / 'checkpoints' / 'step_000000004'} (step 4)" in capsys.readouterr().out
    assert [r["step"] for r in _records(run)] == [1, 2, 3, 4, 6]
    changes = {c["key"]: (c["before"], c["after"], c["changes_result"]) for c in _history(run)[-1]["changes"]}
    assert changes == {"trainer.max_steps": (4, 6, False), "trainer.log_every_steps": (1, 2, False),
                       "trainer.device": ("auto", "cpu", False)}


def test_a_misspelt_key_in_resume_changes_names_the_close_ones(finished, capsys):
    run, args = finished
    assert train.main([*args, "optim.lr=1e-3", "trainer.resume_changes=optim.lrr"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "trainer.resume_changes names 'optim.lrr', which is not a config key; did you mean optim.lr" in line


def _flat(node, prefix=""):
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _set(node, dotted, value):
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[key]
    node[last] = value


@pytest.fixture(scope="module")
def composed_config(tmp_path_factory):
    args = train.parse_args([*BASE, "--output-dir", str(tmp_path_factory.mktemp("cfg") / "run")])
    return train.resolve_config(args).config


LEAF = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                 st.text(string.ascii_letters + string.digits + "_", max_size=6))


@FUZZ
@given(data=st.data(), mode=st.sampled_from(["refuse", "allow", "name them"]))
def test_fuzzed_checkpoint_configs_are_refused_exactly_when_a_result_setting_differs(composed_config, data, mode):
    keys = sorted(_flat(json.loads(recorded_config(composed_config))))
    edits = data.draw(st.dictionaries(st.sampled_from(keys), LEAF, max_size=6))
    saved = json.loads(recorded_config(composed_config))
    current = _flat(saved)
    for key, value in edits.items():
        _set(saved, key, value)
    differ = sorted(k for k, v in edits.items() if v != current[k])
    max_steps = composed_config.trainer.max_steps
    refused = [k for k in differ if k not in FREE_KEYS
               and not (k == "trainer.max_steps" and isinstance(edits[k], int) and edits[k] < max_steps)]
    allow = {"refuse": "refuse", "allow": "allow", "name them": ",".join(refused) or "refuse"}[mode]
    config = dataclasses.replace(composed_config,
                                 trainer=dataclasses.replace(composed_config.trainer, resume_changes=allow))
    try:
        changes = check_resume_config(json.dumps(saved), config, checkpoint=Path("ckpt"), history=Path("h"))
    except ResumeConfigError as err:
        assert mode == "refuse" and refused
        listed = str(err).split(": ", 1)[1].split(". Rerun")[0]
        assert [part.split(": ")[0] for part in listed.split("; ")] == refused
        return
    assert mode != "refuse" or not refused
    assert sorted(c.key for c in changes if c.key != "trainer.resume_changes") == \
        [k for k in differ if k != "trainer.resume_changes"]


JSON = st.recursive(LEAF, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3))


@FUZZ
@given(st.one_of(st.text(max_size=30), JSON.map(json.dumps)))
def test_a_damaged_config_record_is_a_checkpoint_error_or_a_listed_change(composed_config, recorded):
    try:
        check_resume_config(recorded, composed_config, checkpoint=Path("ckpt"), history=Path("h"))
    except (ResumeConfigError, CheckpointError) as err:
        assert "ckpt" in str(err)
