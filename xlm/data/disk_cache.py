"""Datasets cached on disk: built once, written atomically, checked on every read.

A cache entry is a `datasets.Dataset.save_to_disk` directory. It appears under its final name
only once it is complete (written to a temp dir, then renamed), so a killed run never leaves a
half-written entry that a later run would trust; an entry that fails its check is moved aside
and rebuilt, with a warning naming it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from collections.abc import Callable, Iterator

import datasets


class CacheWarning(UserWarning):
    """A cache entry was unreadable and has been rebuilt."""


def default_cache_root() -> Path:
    """``$XLM_CACHE_DIR``, else ``~/.cache/xlm``."""
    root = os.environ.get("XLM_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "xlm"


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def remove_dir(path: Path) -> None:
    """Move ``path`` out of the way atomically, then delete it."""
    trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.trash-", dir=path.parent))
    try:
        os.replace(path, trash / "old")
    except FileNotFoundError:
        pass
    shutil.rmtree(trash, ignore_errors=True)


def _read(path: Path, check: Callable[[datasets.Dataset], None]) -> datasets.Dataset:
    ds = datasets.load_from_disk(str(path))
    if not isinstance(ds, datasets.Dataset):
        raise ValueError(f"expected a Dataset, found {type(ds).__name__}")
    check(ds)
    return ds


def cached_dataset(path: Path, build: Callable[[], datasets.Dataset],
                   check: Callable[[datasets.Dataset], None] = lambda ds: None, *,
                   warning: type[Warning] = CacheWarning) -> datasets.Dataset:
    """The dataset at `path`, built by `build()` and saved there first if absent or unreadable.

    `check` raises if a read entry is not what `build` would make (row count, features)."""
    with quiet_datasets():
        if path.exists():
            try:
                return _read(path, check)
            except Exception as err:
                warnings.warn(f"cache {path} is unreadable ({type(err).__name__}: {err}); regenerating it",
                              warning, stacklevel=3)
                remove_dir(path)
        ds = build()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            ds.save_to_disk(str(tmp / "data"))
            try:
                os.replace(tmp / "data", path)
            except OSError:  # another process put a (non-empty) entry there first: use theirs if it reads
                try:
                    return _read(path, check)
                except Exception:
                    remove_dir(path)
                    os.replace(tmp / "data", path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return _read(path, check)
