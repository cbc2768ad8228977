"""Atomic file and directory writes, safetensors-ready state dicts, and reading JSON files that came
from elsewhere.

A directory written with `write_atomically` either is complete or does not exist under its
final name: it is filled as a hidden sibling, fsynced, and renamed into place. A write that runs
out of space is a `DiskFullError` naming the file, whichever library was writing it (torch and
safetensors wrap the OSError in errors of their own).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from safetensors.torch import save as safetensors_bytes

from xlm.errors import XlmUserError

__all__ = ["DiskFullError", "commit_dir", "new_temp_dir", "read_json_object", "replace_file", "save_safetensors",
           "state_dict_for_safetensors", "write_atomically", "write_file"]


# no space left, over quota, over the file size limit (RLIMIT_FSIZE): the same remedy for the user
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class DiskFullError(XlmUserError, OSError):
    """A write that ran out of space (or over a quota or the file size limit); names the file."""

    def __str__(self) -> str:  # the message alone, not OSError's "[Errno N] ...: 'file'"
        return str(self.args[0]) if self.args else ""


def _disk_full(file: Path, code: int, left: str) -> DiskFullError:
    err = DiskFullError(f"disk full while writing {file} ({os.strerror(code)}); {left}")
    err.errno, err.filename = code, str(file)
    return err


def disk_full_errno(err: BaseException) -> int | None:
    """The errno of the out-of-space OSError behind `err` (itself, or what it was raised from)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return current.errno
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def write_file(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """`write(f)` fills `path` through a Python file object, so that an out-of-space write
    surfaces as an OSError (torch.save given a path reports only `enforce fail`). A failed write
    leaves no file."""
    try:
        with open(path, "wb") as f:
            write(f)
    except Exception as err:
        path.unlink(missing_ok=True)
        code = disk_full_errno(err)
        if code is None or isinstance(err, DiskFullError):
            raise
        raise _disk_full(path, code, "the partial file was removed") from err


def save_safetensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    write_file(path, lambda f: f.write(safetensors_bytes(state, metadata=metadata)))


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
    """`write(tmp_dir)` fills a fresh dir that then replaces `final` in one rename; out of space,
    the partial dir is removed and `final` is left as it was."""
    tmp, existed = None, final.exists()
    try:
        tmp = new_temp_dir(final)
        write(tmp)
        commit_dir(tmp, final)
    except Exception as err:
        code = disk_full_errno(err)
        if code is None:
            raise
        file = Path(err.filename) if isinstance(err, DiskFullError) and err.filename else final
        if tmp is not None and file.is_relative_to(tmp):
            file = final / file.relative_to(tmp)
        left = f"{final} is as it was" if existed else f"{final} was not created"
        raise _disk_full(file, code, f"the partial write was removed and {left}") from err
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_file(path: Path, data: str | bytes) -> None:
    """Writes `data` (text as UTF-8) to `path` in one rename: a reader sees the old file or the new one, whole."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    raw = data.encode() if isinstance(data, str) else data
    try:
        write_file(tmp, lambda f: (f.write(raw), f.flush(), os.fsync(f.fileno())))
        os.replace(tmp, path)
    except DiskFullError as err:
        raise _disk_full(path, err.errno, f"{path} is as it was") from err
    finally:
        tmp.unlink(missing_ok=True)


def read_json_object(path: Path, error: type[XlmUserError]) -> dict[str, Any]:
    """The JSON object in `path`; a file that is not UTF-8, not JSON or not an object raises `error`,
    naming the file and the line: config files come with downloaded checkpoints."""
    data = path.read_bytes()
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise error(f"{path}, line {line}: not UTF-8 (byte 0x{data[err.start]:02x}); JSON is UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise error(f"{path}, line {err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(value, dict):
        raise error(f"{path} holds a JSON {type(value).__name__}, not an object of keys and values")
    return value
