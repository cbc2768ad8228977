"""Atomic file and directory writes, and safetensors-ready state dicts.

A directory written with `write_atomically` either is complete or does not exist under its
final name: it is filled as a hidden sibling, fsynced, and renamed into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["commit_dir", "new_temp_dir", "state_dict_for_safetensors", "write_atomically"]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for f in path.iterdir():
        if f.is_dir():
            _fsync_tree(f)
            continue
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(path)


def state_dict_for_safetensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous copies with shared storage broken (safetensors refuses aliased tensors)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def new_temp_dir(final: Path) -> Path:
    """A fresh hidden sibling of `final` to fill, then `commit_dir` into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))


def commit_dir(tmp: Path, final: Path) -> None:
    """fsyncs `tmp` and renames it to `final` (replacing it) in one step."""
    _fsync_tree(tmp)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


def write_atomically(final: Path, write: Any) -> None:
    """`write(tmp_dir)` fills a fresh dir that then replaces `final` in one rename."""
    tmp = new_temp_dir(final)
    try:
        write(tmp)
        commit_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
