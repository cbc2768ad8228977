"""torch.distributed setup: one process, or many under torchrun (gloo on CPU, nccl on GPU), and
FSDP2 sharding (`torch.distributed.fsdp.fully_shard`) of a model's transformer blocks."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from xlm.placement import as_device


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0, *, option: str = "trainer.device") -> torch.device:
    """'auto' (this rank's GPU, else the CPU) or a device this machine has; `option` names the setting in errors."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return as_device(name, option=option, auto=True)


def init_distributed(device_name: str) -> DistEnv:
    """Reads torchrun's environment; initialises the process group when there are several ranks."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        # DDP imports torch.distributed.nn on first use, whose functions take `group=group.WORLD` as a
        # default: imported after the group exists, they keep it (and gloo's threads) alive past
        # destroy_process_group, and a rank still finalizing when its peer exits can then abort.
        import torch.distributed.nn

        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def all_reduce_sum(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def broadcast_flag(flag: bool, env: DistEnv) -> bool:
    """True on every rank when any rank says True (stop signals, time budgets)."""
    if not env.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=env.device if env.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_gather_object(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's `obj`, in rank order (picklable Python values)."""
    if not env.enabled:
        return [obj]
    gathered: list[Any] = [None] * env.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's `obj` on every rank."""
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


PARAM_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The entries of the model's `layers`/`blocks` ModuleList(s)."""
    blocks: list[torch.nn.Module] = []
    for name in ("layers", "blocks"):
        found = getattr(model, name, None)
        if isinstance(found, torch.nn.ModuleList):
            blocks.extend(found)
    return blocks


def apply_fsdp(model: torch.nn.Module, env: DistEnv, *, param_dtype: str | None = None) -> int:
    """Shards `model` in place with FSDP2: `fully_shard` on each transformer block, then on the root
    (embeddings, final norm, heads). With `param_dtype` ("bf16" | "fp16" | "fp32") the forward and
    backward run in that dtype while the sharded parameters, optimizer state and gradient reductions
    stay fp32 (`MixedPrecisionPolicy`). Returns the number of blocks sharded on their own."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(env.device.type, (env.world_size,))
    policy = MixedPrecisionPolicy()
    if param_dtype is not None:
        policy = MixedPrecisionPolicy(param_dtype=PARAM_DTYPES[param_dtype], reduce_dtype=torch.float32)
    blocks = transformer_blocks(model)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return len(blocks)


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


def exit_worker(code: int) -> NoReturn:
    """A torchrun worker ends here, once its files are written and its process group destroyed,
    without interpreter teardown: after FSDP2 the gloo group stays alive past destroy_process_group
    (its DeviceMesh outlives the model, held by torch's DTensor caches), and a rank tearing down
    while its peer exits can abort with SIGABRT, failing a run that has finished."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
