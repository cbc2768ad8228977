"""Loss and prediction metrics over a whole split (no example dropped), shared by the
trainer's periodic evaluation and the evaluate recipe. `progress` bars are drawn on a terminal
only (tqdm's disable=None): in a log file they would be `\r`-overwritten lines."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import datasets
import torch
from tqdm.auto import tqdm

from xlm.data.task import Task
from xlm.errors import XlmError
from xlm.protocols import Unit


class EvaluationStopped(XlmError):
    """`stop()` said yes between two batches (a stop signal): the split was not scored to the end."""


def _batches(ds: datasets.Dataset, batch_size: int, stop: Callable[[], bool] | None = None
             ) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(ds), batch_size):
        if stop is not None and stop():
            raise EvaluationStopped(f"stopped after {start} of {len(ds)} rows")
        chunk = ds[start : start + batch_size]
        keys = list(chunk)
        yield [{k: chunk[k][i] for k in keys} for i in range(len(chunk[keys[0]]))]


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate_loss(unit: Unit, ds: datasets.Dataset, *, batch_size: int, device: torch.device,
                  progress: bool = False, stop: Callable[[], bool] | None = None) -> dict[str, float]:
    """Token-weighted mean loss over the split, and `nll_bound` (nats per token) where the family's
    loss gives a likelihood bound of its own (`nll_bound_sum` over `bound_tokens`: ILM).
    EvaluationStopped when `stop()` says yes before a batch."""
    was_training = unit.model.training
    unit.model.eval()
    total, count, bound, bound_tokens = 0.0, 0.0, 0.0, 0.0
    try:
        for examples in tqdm(_batches(ds, batch_size, stop), total=-(-len(ds) // batch_size), desc="eval loss",
                             disable=None if progress else True, leave=False):
            out = unit.loss(unit.model, _to_device(unit.collate_train(examples), device))
            n = float(out["num_tokens"])
            total += float(out["loss"]) * n
            count += n
            if "nll_bound_sum" in out:
                bound += float(out["nll_bound_sum"])
                bound_tokens += float(out["bound_tokens"])
    finally:
        unit.model.train(was_training)
    result = {"loss": total / max(count, 1.0), "num_tokens": count}
    if bound_tokens:
        result["nll_bound"] = bound / bound_tokens
    return result


@torch.no_grad()
def evaluate_predictions(unit: Unit, task: Task, ds: datasets.Dataset, *, batch_size: int,
                         device: torch.device, progress: bool = False,
                         generator: torch.Generator | None = None, stop: Callable[[], bool] | None = None,
                         probe: bool = True) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Mean of each of the task's metrics (and of `model_calls`, the forward passes a row took, where
    the sampler reports them; and the task's probe of the model, e.g. star's `probe_*`, where the task and
    the family have one, unless `probe` is off: a sampler benchmark times and counts the sampler alone),
    and one record per example. EvaluationStopped when `stop()` says yes before a batch."""
    was_training = unit.model.training
    unit.model.eval()
    records: list[dict[str, Any]] = []
    try:
        for examples in tqdm(_batches(ds, batch_size, stop), total=-(-len(ds) // batch_size), desc="predict",
                             disable=None if progress else True, leave=False):
            out = unit.predict(_to_device(unit.collate_predict(examples), device), generator=generator)
            row_calls = out.get("row_calls")  # samplers whose rows stop on their own report each row's forwards
            read = getattr(task, "probe", None) if probe else None
            probes = (read(unit, examples) if read is not None else None) or [{}] * len(examples)
            for i, (example, text) in enumerate(zip(examples, out["text"])):
                records.append({"prompt": example.get("prompt"), "target": example.get("target"),
                                "prediction": text, **task.score(text, example), **probes[i],
                                **({"model_calls": float(row_calls[i])} if row_calls is not None else {})})
    finally:
        unit.model.train(was_training)
    return _means(records), records


def _means(records: list[dict[str, Any]]) -> dict[str, float]:
    """Each metric's mean over the records where it is a number (a probe the family cannot read is NaN);
    a metric that is NaN everywhere is left out."""
    means = {}
    for name in records[0] if records else []:
        if name in ("prompt", "target", "prediction"):
            continue
        values = [r[name] for r in records if not math.isnan(r[name])]
        if values:
            means[name] = sum(values) / len(values)
    return means
