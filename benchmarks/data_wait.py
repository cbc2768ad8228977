"""How much of the training step waits on data: the trainer's own loop on a map-style task, with
collation in the training process (data.num_workers=0) and in two dataloader workers.

    python -m benchmarks.bench data_wait [--quick]         (CPU)
    python -m benchmarks.gpu data_wait                     (CUDA, bf16 autocast)

The wait is the time the trainer spends blocked taking each step's batches (reading rows and,
with 0 workers, collating them), over the time of its training steps, which include it.
`data_wait` counts every step, `data_wait_steady` all but the first, whose wait starts the workers.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from typing import Any

import xlm
from xlm.data.tasks import build_task
from xlm.recipes import train
from xlm.recipes.distributed import init_distributed
from xlm.recipes.trainer import Trainer

#: ILM's collation (dropping tokens row by row, in Python) is the slowest of the families', MLM's
#: (masking whole tensors) one of the fastest.
ARCHS = ("ilm_star", "mlm_star")


def _timed(fn: Callable[[], Any], times: list[float]) -> Callable[[], Any]:
    def run() -> Any:
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
        return out
    return run


def measure_wait(arch: str, workers: int, *, steps: int, batch: int, device: str,
                 overrides: tuple[str, ...] = ()) -> tuple[list[float], list[float]]:
    """(each step's seconds, each step's seconds waiting on data) of a star_medium training run."""
    with tempfile.TemporaryDirectory(prefix="xlm-data-wait-") as out:
        args = train.parse_args(["--arch", arch, "--task", "star_medium", "--output-dir", out,
                                 f"trainer.max_steps={steps}", f"data.batch_size={batch}",
                                 f"data.num_workers={workers}", "task.eval_size=16", "trainer.eval_every_steps=0",
                                 "trainer.progress_bar=false", "trainer.tensorboard=false",
                                 f"trainer.checkpoint_every_steps={steps}", f"trainer.device={device}", *overrides])
        composed = train.resolve_config(args)
        task = build_task(composed.config.task)
        config = train.fit_model_to_task(composed, task)
        trainer = Trainer(config, xlm.get_family(xlm.list_archs()[arch]), task, init_distributed(device))
        step_times: list[float] = []
        waits: list[float] = []
        trainer.batches.next = _timed(trainer.batches.next, waits)
        trainer._train_step = _timed(trainer._train_step, step_times)
        trainer.run()
    return step_times, waits


def bench_data_wait(quick: bool, device: str = "cpu", archs: tuple[str, ...] = ARCHS) -> list[dict[str, Any]]:
    steps, batch = (6, 16) if quick else (40, 64 if device == "cpu" else 256)
    overrides = ("trainer.autocast_dtype=bf16",) if device.startswith("cuda") else ()
    rows = []
    for arch in archs:
        for workers in (0, 2):
            step_times, waits = measure_wait(arch, workers, steps=steps, batch=batch, device=device,
                                             overrides=overrides)
            rows.append({"arch": arch, "device": device, "batch": batch, "num_workers": workers, "steps": steps,
                         "step_ms": round(1000 * sum(step_times) / steps, 2),
                         "data_wait_ms": round(1000 * sum(waits) / steps, 2),
                         "first_wait_ms": round(1000 * waits[0], 2),
                         "data_wait": round(sum(waits) / sum(step_times), 4),
                         "data_wait_steady": round(sum(waits[1:]) / sum(step_times[1:]), 4)})
    return rows
