"""The optimizer and its learning-rate schedule: AdamW over two parameter groups (weight decay on
matrices only), linear warmup then cosine decay to a floor, or constant."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .config import OptimConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: no decay on norms, biases and embeddings (tied heads included)."""
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 and id(p) not in embedding_params else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_adamw(params: Any, optim: OptimConfig, *, device: torch.device, sharded: bool = False) -> torch.optim.AdamW:
    """AdamW with the fused kernel on CPU and CUDA (one kernel for all parameters instead of a loop
    over tensors); sharded (FSDP) parameters keep the default implementation."""
    return torch.optim.AdamW(params, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
                             fused=device.type in ("cpu", "cuda") and not sharded)


def lr_schedule(optim: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """The factor on `optim.lr` at each step, for `torch.optim.lr_scheduler.LambdaLR`: linear warmup
    over `optim.warmup_steps`, then constant or a cosine between 1 and `optim.min_lr_ratio` with
    `optim.cosine_cycles` periods up to `optim.decay_steps` or else `total_steps` (0.5: from 1 down to the floor
    once; xlm-core's MLM star recipe uses HF's cosine_with_min_lr with 4), then the floor. A `decay_steps` below
    the budget gives a run that goes on at the floor, whose first `decay_steps` steps are a shorter run's."""
    decay_steps = optim.decay_steps if optim.decay_steps is not None else total_steps

    def factor(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        if optim.schedule == "constant":
            return 1.0
        if optim.decay_steps is not None and step >= decay_steps:
            return optim.min_lr_ratio  # a whole number of cosine periods would end at the top
        progress = min(1.0, (step - optim.warmup_steps) / max(1, decay_steps - optim.warmup_steps))
        wave = 0.5 * (1 + math.cos(2 * math.pi * optim.cosine_cycles * progress))
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * wave

    return factor


def group_settings(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Each parameter group's settings from this run's config (all but its parameters and the
    scheduled lr), to put back after a checkpoint's optimizer state replaced them."""
    return [{k: v for k, v in group.items() if k not in ("params", "lr")} for group in optimizer.param_groups]


def apply_group_settings(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                         settings: list[dict[str, Any]]) -> None:
    """After a resume: the checkpoint continues the state (moments, step counts, schedule position),
    the config decides the settings, so that a change allowed on resume (optim.lr, betas, weight
    decay, the schedule) is what trains; unchanged settings give back the very same values."""
    for group, own in zip(optimizer.param_groups, settings, strict=True):
        group.update(own)
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * factor(scheduler.last_epoch)
