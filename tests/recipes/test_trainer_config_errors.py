"""Configuration mistakes the trainer finds (once the model, the data or a checkpoint is at hand)
are ConfigErrors, which `xlm train` reports as one `error: ...` line and exit status 2."""

import pytest
import torch

import xlm
from xlm.data.tasks import build_task
from xlm.recipes import train
from xlm.recipes.config import ConfigError
from xlm.recipes.distributed import DistEnv
from xlm.recipes.trainer import Trainer

from .test_resume_and_ddp import _finish, _train
from .test_scale import TORCHRUN, _shards

DEBUG = ["--arch", "arlm_tiny", "--task", "star_easy", "--experiment", "debug", "trainer.progress_bar=false",
         "trainer.tensorboard=false"]


def _config_and_task(tmp_path, *overrides):
    args = train.parse_args([*DEBUG, "--output-dir", str(tmp_path / "run"), *overrides])
    composed = train.resolve_config(args)
    task = build_task(composed.config.task)
    return train.fit_model_to_task(composed, task), task


def _only_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_batch_larger_than_the_training_set_is_one_error_line_and_exit_2(tmp_path, capsys):
    code = train.main([*DEBUG, "--output-dir", str(tmp_path / "run"), "data.batch_size=100000",
                       "task.train_size=16"])
    line = _only_error_line(capsys.readouterr().err)
    assert code == 2
    assert "data.batch_size=100000 is larger than the training set (16 examples)" in line
    assert "of at most 16" in line


def test_batch_not_divisible_by_the_number_of_processes(tmp_path):
    config, task = _config_and_task(tmp_path, "data.batch_size=16")
    three_ranks = DistEnv(rank=0, world_size=3, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"data.batch_size=16 must be divisible by the number of processes "
                                          r"\(3\); e.g. data.batch_size=15"):
        Trainer(config, xlm.get_family("arlm"), task, three_ranks)


def test_streaming_asked_of_a_task_that_does_not_stream(tmp_path, capsys):
    code = train.main([*DEBUG, "--output-dir", str(tmp_path / "run"), "task.streaming=true"])
    line = _only_error_line(capsys.readouterr().err)
    assert code == 2
    assert "task.streaming is a setting of the text task, not of 'star_easy'" in line


def test_resuming_a_streaming_checkpoint_without_streaming_is_one_error_line_and_exit_2(tmp_path, capsys):
    corpus = _shards(tmp_path / "corpus", 2)
    run = ["--arch", "arlm_tiny", "--task", "text", "--experiment", "debug", "--output-dir", str(tmp_path / "run"),
           "trainer.progress_bar=false", "trainer.tensorboard=false", f"task.data_files={corpus}",
           "task.tokenizer_vocab_size=300", "task.block_size=32", "task.eval_size=8",
           "task.streaming_eval_documents=20", "trainer.max_steps=2", "data.batch_size=4"]
    assert train.main([*run, "task.streaming=true"]) == 0
    capsys.readouterr()
    assert train.main([*run, "trainer.max_steps=4", "task.streaming=false"]) == 2
    assert "task.streaming: True -> False" in _only_error_line(capsys.readouterr().err)  # a change of the result
    allowed = ["trainer.resume_changes=task.streaming"]  # then the data position cannot continue
    assert train.main([*run, "trainer.max_steps=4", "task.streaming=false", *allowed]) == 2
    line = _only_error_line(capsys.readouterr().err)
    assert "holds a streaming data position but this run reads a map-style training set" in line
    assert "resume with the same task.streaming" in line


def test_fsdp_resuming_a_checkpoint_written_without_fsdp_is_an_error_line_and_exit_2(tmp_path):
    steps = ["trainer.eval_every_steps=0", "data.batch_size=8", "trainer.device=cpu"]
    _finish(_train(tmp_path / "run", "trainer.max_steps=2", *steps))
    err = _finish(_train(tmp_path / "run", "trainer.max_steps=4", "trainer.parallelism=fsdp", *steps,
                         launcher=TORCHRUN), expect=1)
    # both ranks find it; torchrun stops the slower one once the first has returned 2
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert errors and all("was written without FSDP" in e and "trainer.parallelism=ddp" in e for e in errors), err
    assert "exitcode  : 2" in err, err
    assert "ConfigError" not in err, err  # no traceback from a worker


@pytest.mark.parametrize("override, says", [
    ("optim.lr=-1", "optim.lr must be non-negative, got -1.0"),  # was torch's ValueError traceback
    ("optim.weight_decay=-0.1", "optim.weight_decay must be non-negative"),
    ("optim.beta2=1", "optim.beta2 must be in [0, 1), got 1.0"),
    ("optim.eps=0", "optim.eps must be positive"),
    ("optim.grad_clip=0", "optim.grad_clip must be null (no clipping) or positive"),
    ("optim.warmup_steps=-5", "optim.warmup_steps must be a non-negative integer, got -5"),  # was taken
    ("optim.min_lr_ratio=2", "optim.min_lr_ratio must be in [0, 1]"),
    ("data.eval_batch_size=0", "data.eval_batch_size must be a positive integer"),
    ("trainer.eval_every_steps=-1", "trainer.eval_every_steps must be a non-negative integer (0: only at the end)"),
    ("trainer.checkpoint_every_steps=0", "trainer.checkpoint_every_steps must be a positive integer"),  # was a
    ("trainer.log_every_steps=0", "trainer.log_every_steps must be a positive integer"),  # ZeroDivisionError
    ("trainer.max_minutes=-1", "trainer.max_minutes must be null (no budget) or positive"),  # trained 1 step
    ("trainer.ema_decay=1.5", "trainer.ema_decay must be null (no EMA) or in (0, 1), got 1.5"),  # was taken
    ("trainer.max_skipped_steps=0", "trainer.max_skipped_steps must be a positive integer"),
    ("task.eval_size=0", "task.eval_size must be null (the whole split) or a positive integer, got 0"),  # val_loss 0
    ("task.train_size=0", "task.train_size must be null (the whole split) or a positive integer"),
])
def test_a_number_out_of_its_range_is_one_line_before_anything_runs(override, says, tmp_path, capsys):
    assert train.main([*DEBUG, "--output-dir", str(tmp_path / "run"), override]) == 2
    assert _only_error_line(capsys.readouterr().err).startswith(f"error: {says}")
    assert not (tmp_path / "run").exists()
