"""Map-style batches collated in dataloader workers (data.num_workers): the same batches, the same
weights and the same exact resume as collating in the training process."""

import shutil
import signal
import time

import datasets
import pytest
import torch

import xlm
from xlm.data.tasks import build_task, task_config
from xlm.recipes import train
from xlm.recipes.collated_batches import CollatedBatches
from xlm.recipes.data_order import EpochBatches
from xlm.recipes.distributed import DistEnv

from .test_resume_and_ddp import _finish, _logged_steps, _train, _weights

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _mlm_batches(num_workers: int, accum: int = 2) -> CollatedBatches:
    """MLM's collation masks at random: the batches depend on the collation RNG as well as the order."""
    task = build_task(task_config("star_easy"))
    train_ds = task.dataset("train").select(range(40)).select_columns(["prompt_ids", "target_ids"])
    family = xlm.get_family("mlm")
    model = xlm.create_model("mlm_tiny", vocab_size=len(task.tokenizer))
    unit = family.unit_factory(model, task.tokenizer, family.sampler_config_class(max_new_tokens=12))
    order = EpochBatches(len(train_ds), 6 * accum, seed=3, env=CPU)
    return CollatedBatches(order, train_ds, unit.collate_train, accum=accum, num_workers=num_workers)


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), key


def test_workers_collate_the_same_batches_and_keep_the_same_position():
    inline, workers = _mlm_batches(0), _mlm_batches(2)
    try:
        for _ in range(7):  # 40 examples / 12 a step: across two epoch ends
            _assert_same(inline.next(), workers.next())
            assert inline.state() == workers.state() and inline.describe() == workers.describe()
        assert inline.state()["epoch"] == 2
        # a resume at a saved position continues alike, whatever was read ahead
        saved = inline.state()
        expected = [inline.next() for _ in range(3)]
        workers.load_state(saved)
        for batch in expected:
            _assert_same(batch, workers.next())
    finally:
        workers.close()


def test_collation_leaves_the_training_rng_alone():
    batches = _mlm_batches(0)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    batches.next()
    assert torch.equal(torch.get_rng_state(), before)


def test_training_with_two_workers_gives_bitwise_the_same_weights(tmp_path):
    common = ["--arch", "mlm_tiny", "--task", "star_easy", "--experiment", "debug", "trainer.progress_bar=false",
              "trainer.tensorboard=false", "trainer.max_steps=6", "trainer.grad_accum_steps=2"]
    for workers in (0, 2):
        assert train.main([*common, "--output-dir", str(tmp_path / f"w{workers}"), f"data.num_workers={workers}"]) == 0
    a, b = _weights(tmp_path / "w0"), _weights(tmp_path / "w2")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_from_a_checkpoint_with_workers_gives_the_weights_of_a_straight_run(tmp_path):
    common = ["--arch", "mlm_tiny", "--task", "star_easy", "--experiment", "debug", "trainer.progress_bar=false",
              "trainer.tensorboard=false", "trainer.max_steps=6", "trainer.checkpoint_every_steps=3",
              "trainer.keep_last_checkpoints=0"]
    assert train.main([*common, "--output-dir", str(tmp_path / "straight")]) == 0
    run = tmp_path / "resumed"
    assert train.main([*common, "--output-dir", str(run), "data.num_workers=2"]) == 0
    shutil.rmtree(run / "checkpoints" / "step_000000006")  # as if stopped after step 3's checkpoint
    (run / "model.safetensors").unlink()
    assert train.main([*common, "--output-dir", str(run), "data.num_workers=2"]) == 0
    straight, resumed = _weights(tmp_path / "straight"), _weights(run)
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


@pytest.mark.slow
def test_sigterm_with_workers_then_resume_gives_the_weights_of_a_run_without_workers(tmp_path):
    steps = ["--arch", "mlm_tiny", "trainer.max_steps=60", "trainer.checkpoint_every_steps=1000", "data.batch_size=16"]
    _finish(_train(tmp_path / "straight", *steps, "data.num_workers=0"))
    run = tmp_path / "interrupted"
    proc = _train(run, *steps, "data.num_workers=2")
    deadline = time.time() + 300
    while _logged_steps(run) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _finish(proc, expect=128 + signal.SIGTERM)
    assert 3 <= _logged_steps(run) < 60, "the run must have been stopped mid-way"
    _finish(_train(run, *steps, "data.num_workers=2"))
    straight, resumed = _weights(tmp_path / "straight"), _weights(run)
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_a_dataset_of_plain_columns_is_read_by_position():
    ds = datasets.Dataset.from_dict({"input_ids": [[i, i + 1] for i in range(8)]})
    order = EpochBatches(8, 4, seed=0, env=CPU)
    batches = CollatedBatches(order, ds, lambda rows: {"first": torch.tensor([r["input_ids"][0] for r in rows])},
                              accum=1, num_workers=0)
    first = batches.next()[0]["first"].tolist()
    assert first == order.indices_at(0, 0) and order.state() == {"epoch": 0, "index": 1}
