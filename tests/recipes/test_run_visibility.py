"""What a researcher sees of a training run (issue 29): the start banner, progress in a log file (no
`\\r` or cursor escapes) with an ETA from steady-state steps, the resolved config and run.json in the
run dir, trainer.num_threads and the warning on a busy host, TensorBoard when asked for but missing,
and the default run dir's name."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import xlm
from xlm.recipes import train
from xlm.recipes.config import ConfigError
from xlm.recipes.host import HostLoad, cpu_quota, oversubscription_warning, torch_threads
from xlm.recipes.progress import Eta, Progress, duration

DEBUG = ["--arch", "arlm_tiny", "--task", "star_easy", "--experiment", "debug", "trainer.tensorboard=false"]
REPO = Path(__file__).resolve().parents[2]


def _train_process(run: Path, *extra: str, threads: str = "2") -> subprocess.CompletedProcess:
    """A real `python -m xlm.recipes.train` with stderr and stdout piped, as into a log file."""
    cmd = [sys.executable, "-m", "xlm.recipes.train", *DEBUG, "--output-dir", str(run), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": threads})


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One run with the progress bar on (the default) and its output going to pipes."""
    run = tmp_path_factory.mktemp("logged") / "run"
    done = _train_process(run, "trainer.max_steps=6", "trainer.progress_every_seconds=0", "trainer.num_threads=1")
    assert done.returncode == 0, done.stderr
    return run, done


def test_the_banner_says_what_is_trained_on_what_and_where_before_the_first_step(logged):
    run, done = logged
    err = done.stderr
    params = sum(p.numel() for p in xlm.load_model(run).parameters())
    banner = err[: err.index("train step 1/")]  # all of it before the first step
    assert f"train arlm_tiny (arlm family): {params:,} parameters, a fresh start" in banner
    assert "device cpu, float32, 1 thread\n" in banner  # trainer.num_threads=1 wins over OMP_NUM_THREADS=2
    assert "task star_easy: 256 training rows, 16 validation rows (of 100)" in banner
    assert "batch 8 rows = 8 rows/step, ~" in banner and "tokens/step; steps 0 -> 6" in banner
    assert f"output {run}: config.yaml" in banner
    out = done.stdout.splitlines()  # stdout's contract: the JSON summary, then the run dir
    assert json.loads(out[-2])["step"] == 6 and out[-1] == f"run dir: {run}"


def test_progress_in_a_log_is_plain_lines_without_carriage_returns_or_escapes(logged):
    _, done = logged
    assert "\r" not in done.stderr and "\x1b[" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("train step ")]
    assert [line.split()[2] for line in lines] == [f"{n}/6" for n in range(1, 7)]
    assert "eta after warm-up" in lines[0] and "eta after warm-up" not in lines[-1]
    assert "final evaluation on 16 validation rows" in done.stderr


def test_the_resolved_config_and_run_json_are_in_the_run_dir(logged, capsys):
    run, _ = logged
    assert train.main([*DEBUG, "--output-dir", str(run), "trainer.max_steps=6", "trainer.progress_every_seconds=0",
                       "trainer.num_threads=1", "--dump-config"]) == 0
    assert (run / "config.yaml").read_text() == capsys.readouterr().out
    record = json.loads((run / "run.json").read_text())
    assert record["command"].startswith("python -m xlm.recipes.train --arch arlm_tiny")
    assert record["status"] == "finished"
    env = record["environment"]
    assert env["xlm"] == xlm.__version__ and env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert env["python"] == ".".join(map(str, sys.version_info[:3])) and env["threads"] == 1
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert env["git"]["commit"] == head
    [segment] = record["segments"]
    assert segment["resumed_from"] is None and segment["end_step"] == 6 and segment["ended"] >= segment["started"]
    assert record["wall_seconds"] == segment["wall_seconds"] > 0


def test_run_json_lists_each_segment_and_how_it_ended_a_killed_one_included(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "xlm.recipes.train", *DEBUG, "--output-dir", str(run),
                             "trainer.max_steps=100000", "trainer.checkpoint_every_steps=1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        while not (run / "checkpoints" / "step_000000003").is_dir():
            assert proc.poll() is None
            time.sleep(0.01)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    done = _train_process(run, "trainer.max_steps=6", "trainer.resume_changes=allow", threads="1")
    assert done.returncode == 0, done.stderr
    record = json.loads((run / "run.json").read_text())
    assert [s["status"] for s in record["segments"]] == ["killed", "finished"]
    assert record["segments"][1]["resumed_from"].startswith(str(run / "checkpoints" / "step_"))
    assert record["started"] == record["segments"][0]["started"] and record["status"] == "finished"


def test_the_eta_leaves_out_the_warm_up_steps():
    eta = Eta()
    assert eta.seconds_left(100) is None  # nothing measured yet: no promise
    for seconds in (240.0, 30.0, 1.0, 1.0, 1.0):  # a compile in the first step, allocation in the second
        eta.add_step(seconds)
    assert eta.seconds_left(100) == 100.0
    eta.eval_seconds = 5.0
    assert eta.seconds_left(100, evals_left=2) == 110.0
    assert duration(3725) == "1:02:05" and duration(65) == "1:05"


def test_progress_not_on_a_terminal_prints_lines_at_most_every_so_often():
    stream = io.StringIO()  # not a terminal
    progress = Progress(desc="train", total=1000, enabled=True, every_s=3600, stream=stream)
    for n in range(1, 1001):
        progress.update(n, {"loss": "1.0"})
    progress.note("step 500: val_loss 1")
    progress.close()
    assert stream.getvalue().splitlines() == ["train step 1/1000 (0%)  loss 1.0",
                                              "train step 1000/1000 (100%)  loss 1.0", "step 500: val_loss 1"]
    silent = io.StringIO()
    Progress(desc="train", total=5, enabled=False, every_s=0, stream=silent).update(1, {})
    assert silent.getvalue() == ""


@pytest.mark.parametrize(("threads", "host", "expected"), [
    (2, HostLoad(cores=2, load1=0.1, quota=None), None),  # an idle machine
    (2, HostLoad(cores=2, load1=1.2, quota=None), "trainer.num_threads=1"),  # another job on one core
    (1, HostLoad(cores=2, load1=1.2, quota=None), None),
    (1, HostLoad(cores=2, load1=3.0, quota=None), None),  # even one thread shares: nothing better to say
    (4, HostLoad(cores=8, load1=0.0, quota=2.0), "the cgroup CPU quota is 2 cores; "),
    (8, HostLoad(cores=8, load1=5.6, quota=None), "trainer.num_threads=2 (or OMP_NUM_THREADS=2)"),
])
def test_the_oversubscription_warning_names_the_cause_and_the_fix(threads, host, expected):
    warning = oversubscription_warning(threads, host)
    if expected is None:
        assert warning is None
    else:
        assert warning.startswith(f"warning: training with {threads} threads but ") and expected in warning
        assert "\n" not in warning


def test_the_cgroup_quota_is_read_in_cores(tmp_path):
    path = tmp_path / "cpu.max"
    path.write_text("150000 100000\n")
    assert cpu_quota(path) == 1.5
    path.write_text("max 100000\n")
    assert cpu_quota(path) is None
    assert cpu_quota(tmp_path / "absent") is None


def test_num_threads_applies_inside_and_is_restored_after():
    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    with torch_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="trainer.num_threads must be null"):
        train.resolve_config(train.parse_args([*DEBUG, "trainer.num_threads=0"]))


def test_tensorboard_is_auto_by_default_and_true_warns_when_it_is_missing(tmp_path, capsys):
    try:
        import torch.utils.tensorboard  # noqa: F401
        installed = True
    except ImportError:
        installed = False
    assert train.resolve_config(train.parse_args(["--arch", "arlm_tiny"])).config.trainer.tensorboard == "auto"
    for mode in ("auto", "true", "false"):
        run = tmp_path / mode
        assert train.main([*DEBUG, "--output-dir", str(run), f"trainer.tensorboard={mode}"]) == 0
        err = capsys.readouterr().err
        warned = "warning: trainer.tensorboard=true but the tensorboard package is not installed" in err
        assert warned == (mode == "true" and not installed), err
        assert (run / "tensorboard").exists() == (mode != "false" and installed)
        logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert logged == [1, 2, 3, 4, 4]  # metrics.jsonl whatever TensorBoard does
    with pytest.raises(ConfigError, match="trainer.tensorboard must be 'auto', 'true' or 'false'"):
        train.resolve_config(train.parse_args([*DEBUG, "trainer.tensorboard=maybe"]))


@pytest.mark.parametrize(("arch", "task", "expected"), [
    ("arlm_star", "star_easy", "runs/arlm_star_easy"),
    ("mdlm_base", "star_easy", "runs/mdlm_base_star_easy"),
    ("arlm_tiny", "text", "runs/arlm_tiny_text"),
    ("my_sort", "sort", "runs/my_sort"),
])
def test_the_default_run_dir_writes_a_shared_word_once(arch, task, expected):
    assert train.default_output_dir(arch, task) == expected


def test_the_default_run_dir_is_used_when_none_is_given():
    assert train.resolve_config(train.parse_args(["--arch", "arlm_star"])).config.output_dir == "runs/arlm_star_easy"


def test_a_run_without_task_says_which_task_it_trains(tmp_path, capsys):
    assert train.main(["--arch", "arlm_tiny", "--experiment", "debug", "--output-dir", str(tmp_path / "run"),
                       "trainer.tensorboard=false"]) == 0
    err = capsys.readouterr().err
    assert "note: no --task given: training on star_easy, the default" in err and "task star_easy: " in err
    assert train.main([*DEBUG, "--output-dir", str(tmp_path / "run2")]) == 0
    assert "no --task given" not in capsys.readouterr().err
