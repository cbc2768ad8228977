"""Atomic checkpoints: written to a temp dir, fsynced, renamed into place, last K kept.

A checkpoint dir `step_000100/` holds `model.safetensors` (and `ema.safetensors`) plus
`trainer_state.pt` (optimizer, scheduler, RNG, data position), read with weights_only=True.
A dir either is complete or does not exist under its final name.

Under FSDP (`trainer.parallelism=fsdp`) the model, optimizer and EMA are saved sharded with
`torch.distributed.checkpoint` into `step_000100/dcp/` (every rank writes its own shards into
the same temp dir, rank 0 adds `trainer_state.pt` and renames the dir into place), so no rank
ever holds the full state; `is_sharded_checkpoint` tells the two layouts apart.
"""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from xlm.errors import XlmError
from xlm.io import state_dict_for_safetensors, write_atomically

CHECKPOINT_RE = re.compile(r"^step_(\d{9})$")


class CheckpointError(XlmError, RuntimeError):
    """A checkpoint that cannot be read; the message names the file."""


def checkpoint_dirs(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return sorted(found)


def save_checkpoint(root: Path, step: int, *, model_state: dict[str, torch.Tensor],
                    ema_state: dict[str, torch.Tensor] | None, trainer_state: dict[str, Any],
                    keep_last: int) -> Path:
    final = root / f"step_{step:09d}"

    def write(tmp: Path) -> None:
        save_file(state_dict_for_safetensors(model_state), tmp / "model.safetensors")
        if ema_state is not None:
            save_file(state_dict_for_safetensors(ema_state), tmp / "ema.safetensors")
        torch.save(trainer_state, tmp / "trainer_state.pt")

    write_atomically(final, write)
    prune_checkpoints(root, keep_last)
    return final


def prune_checkpoints(root: Path, keep_last: int) -> None:
    for _, old in checkpoint_dirs(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


SHARDED_SUBDIR = "dcp"


def is_sharded_checkpoint(path: Path) -> bool:
    return (path / SHARDED_SUBDIR).is_dir()


def load_trainer_state(path: Path) -> dict[str, Any]:
    file = path / "trainer_state.pt"
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint file {file} is unreadable ({type(err).__name__}: {err}); "
                              f"it may be truncated or corrupted") from err


def save_sharded(path: Path, state: dict[str, Any]) -> None:
    """Collective: every rank writes its shards of `state` (DTensors or plain tensors) into `path`/dcp."""
    import torch.distributed.checkpoint as dcp

    dcp.save(state, checkpoint_id=str(path / SHARDED_SUBDIR))


def load_sharded(path: Path, state: dict[str, Any]) -> None:
    """Collective: fills `state` (same keys and layout as saved, any sharding) in place from `path`/dcp."""
    import torch.distributed.checkpoint as dcp

    try:
        dcp.load(state, checkpoint_id=str(path / SHARDED_SUBDIR))
    except Exception as err:
        raise CheckpointError(f"sharded checkpoint {path / SHARDED_SUBDIR} is unreadable "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                              f"it may be truncated or corrupted") from err


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict[str, Any]]:
    def read(name: str, reader: Any) -> Any:
        file = path / name
        try:
            return reader(file)
        except Exception as err:
            raise CheckpointError(f"checkpoint file {file} is unreadable ({type(err).__name__}: {err}); "
                                  f"it may be truncated or corrupted") from err

    model_state = read("model.safetensors", load_file)
    ema_state = read("ema.safetensors", load_file) if (path / "ema.safetensors").exists() else None
    trainer_state = read("trainer_state.pt", lambda f: torch.load(f, map_location="cpu", weights_only=True))
    return model_state, ema_state, trainer_state


def load_latest_checkpoint(root: Path) -> tuple[Path, tuple[dict, dict | None, dict]] | None:
    """The newest readable checkpoint; unreadable newer ones are reported and skipped."""
    for step, path in reversed(checkpoint_dirs(root)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as err:
            warnings.warn(f"skipping checkpoint at step {step}: {err}", stacklevel=2)
    return None
