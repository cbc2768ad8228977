"""The lines a training run prints before its first step, on stderr of the first rank: what is
trained (arch, family, parameters), on what (device, dtype, threads), on which data (task, split
sizes, batch, tokens per step), for how long, and where it is written. The first step can take
long (the compiled CPU GELU, a large model): until now a run said nothing before it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .progress import duration

if TYPE_CHECKING:
    from .trainer import Trainer

SAMPLE_ROWS = 256  # rows the tokens-per-step estimate reads


def mean_row_tokens(trainer: Trainer) -> float:
    """Mean tokens of a training row (prompt and target for seq2seq), over its first rows."""
    if trainer.train_ds is None:  # streaming: packed blocks of the task's length
        return float(trainer.task.max_seq_len)
    rows = trainer.train_ds[: min(SAMPLE_ROWS, len(trainer.train_ds))]
    lengths = [sum(len(column[i]) for column in rows.values()) for i in range(len(next(iter(rows.values()))))]
    return sum(lengths) / max(len(lengths), 1)


def start_banner(trainer: Trainer) -> list[str]:
    config, env, tc = trainer.config, trainer.env, trainer.config.trainer
    threads = torch.get_num_threads()
    params = sum(p.numel() for p in trainer.model.parameters())
    dtype = str(next(trainer.model.parameters()).dtype).removeprefix("torch.")
    precision = dtype + (f", autocast {tc.autocast_dtype}" if tc.autocast_dtype else "")
    device = str(env.device) + (f" ({torch.cuda.get_device_name(env.device)})" if env.device.type == "cuda" else "")
    ranks = f" x {env.world_size} processes" if env.enabled else ""
    val, val_total = len(trainer.val_ds), trainer.val_total
    val_rows = f"{val:,} validation rows" + (f" (of {val_total:,})" if val_total != val else "")
    train = "streamed training rows" if trainer.streaming else f"{len(trainer.train_ds):,} training rows"
    rows = config.data.batch_size * tc.grad_accum_steps
    accum = f" x {tc.grad_accum_steps} micro-batches" if tc.grad_accum_steps > 1 else ""
    tokens = rows * mean_row_tokens(trainer)
    evals = f"evaluate every {tc.eval_every_steps} steps and at the end" if tc.eval_every_steps else \
        "evaluate at the end"
    budget = f", at most {duration(tc.max_minutes * 60)} of training" if tc.max_minutes else ""
    start = (f"resumed from {trainer.resumed_from} (step {trainer.step})" if trainer.resumed_from is not None
             else f"starting from the weights of {trainer.init.label}" if trainer.init is not None
             else "a fresh start")
    return [
        f"train {config.arch} ({trainer.family.name} family): {params:,} parameters, {start}",
        f"  device {device}{ranks}, {precision}, {threads} thread{'s' if threads > 1 else ''}",
        f"  task {trainer.task.name}: {train}, {val_rows}",
        f"  batch {config.data.batch_size} rows{accum} = {rows} rows/step, ~{tokens:,.0f} tokens/step; "
        f"steps {trainer.step} -> {tc.max_steps}{budget}",
        f"  {evals}, checkpoint every {tc.checkpoint_every_steps} steps, log every {tc.log_every_steps}",
        f"  output {trainer.output_dir}: config.yaml (the resolved config), run.json, history.jsonl, metrics.jsonl",
    ]
