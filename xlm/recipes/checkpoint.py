"""Atomic checkpoints: written to a temp dir, fsynced, renamed into place, pruned to the last K.

A checkpoint dir `step_000100/` holds `model.safetensors` (and `ema.safetensors`) plus
`trainer_state.pt` (optimizer, scheduler, RNG, data position), read with weights_only=True.
A dir either is complete or does not exist under its final name.

Pruning keeps the newest `keep_last` readable checkpoints at or before the current step, never the
one just written nor the newest readable one, nor those the trainer protects (the best by
validation, the last one the divergence guard judged good); a dir numbered after the current step
belongs to a run that was resumed from an earlier checkpoint and is left for the run to replace
when it gets there.

Under FSDP (`trainer.parallelism=fsdp`) the model, optimizer and EMA are saved sharded with
`torch.distributed.checkpoint` into `step_000100/dcp/` (every rank writes its own shards into
the same temp dir, rank 0 adds `trainer_state.pt` and renames the dir into place), so no rank
ever holds the full state; `is_sharded_checkpoint` tells the two layouts apart.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
import zipfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from xlm.errors import XlmError, XlmWarning
from xlm.io import save_safetensors, state_dict_for_safetensors, write_atomically, write_file

CHECKPOINT_RE = re.compile(r"^step_(\d{9})$")
# what xlm.io leaves beside a checkpoint when a write is cut short: an unfinished temp dir, or the
# previous checkpoint moved aside while its replacement was renamed in (or best.json's temp file)
INTERRUPTED_WRITE_RE = re.compile(r"^\.(step_\d{9})\.(tmp|old)-.+$|^\.best\.json\.tmp-.+$")


class CheckpointError(XlmError, RuntimeError):
    """A checkpoint that cannot be read; the message names the file."""


def checkpoint_dirs(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return sorted(found)


def checkpoint_name(step: int) -> str:
    return f"step_{step:09d}"


def save_checkpoint(root: Path, step: int, *, model_state: dict[str, torch.Tensor],
                    ema_state: dict[str, torch.Tensor] | None, trainer_state: dict[str, Any],
                    keep_last: int, keep: Collection[int] = ()) -> Path:
    final = root / checkpoint_name(step)

    def write(tmp: Path) -> None:
        save_safetensors(state_dict_for_safetensors(model_state), tmp / "model.safetensors")
        if ema_state is not None:
            save_safetensors(state_dict_for_safetensors(ema_state), tmp / "ema.safetensors")
        write_file(tmp / "trainer_state.pt", lambda f: torch.save(trainer_state, f))

    write_atomically(final, write)
    prune_checkpoints(root, keep_last, current_step=step, keep=keep)
    return final


def prune_checkpoints(root: Path, keep_last: int, *, current_step: int, keep: Collection[int] = ()) -> list[Path]:
    """Deletes the checkpoints at or before `current_step` beyond the newest `keep_last` readable
    ones (unreadable ones do not count), except the one at `current_step` and the steps in `keep`;
    returns what it deleted. keep_last=0 keeps everything."""
    if keep_last <= 0:
        return []
    candidates = [(step, path) for step, path in checkpoint_dirs(root) if step <= current_step]
    kept = {current_step, *keep}
    readable = 0
    for step, path in reversed(candidates):
        if readable == keep_last:
            break
        if is_readable_checkpoint(path):
            kept.add(step)
            readable += 1
    deleted = [path for step, path in candidates if step not in kept]
    for path in deleted:
        shutil.rmtree(path, ignore_errors=True)
    return deleted


def is_readable_checkpoint(path: Path) -> bool:
    """Whether every file of the checkpoint is whole, judged from headers and sizes (no tensor is
    read): what a truncated copy or a write cut short would break."""
    try:
        with zipfile.ZipFile(path / "trainer_state.pt") as state:  # torch.save's zip; the index is at the end
            if not any(name.endswith("/data.pkl") for name in state.namelist()):
                return False
        if is_sharded_checkpoint(path):
            return (path / SHARDED_SUBDIR / ".metadata").is_file()
        ema = [path / "ema.safetensors"] if (path / "ema.safetensors").exists() else []
        for file in [path / "model.safetensors", *ema]:
            with safe_open(file, "pt"):  # checks the header against the file's size
                pass
    except Exception:
        return False
    return True


def clear_interrupted_writes(root: Path) -> list[str]:
    """Cleans up after checkpoint writes a crash cut short, in a checkpoints dir no other process
    writes to: an unfinished temp dir is removed; a complete checkpoint moved aside for its
    replacement is put back if the replacement never arrived, else removed. Returns what it did."""
    done = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        m = INTERRUPTED_WRITE_RE.match(path.name)
        if not m:
            continue
        final = root / m.group(1) if m.group(1) else None
        if m.group(2) == "old" and final is not None and not final.exists():
            os.replace(path, final)
            done.append(f"restored {final.name} from {path.name}")
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        done.append(f"removed {path.name}")
    return done


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
            warnings.warn(f"skipping checkpoint at step {step}: {err}", XlmWarning, stacklevel=2)
    return None
