"""Datasets cached on disk: built once, written atomically, checked on every read.

A cache entry is a `datasets.Dataset.save_to_disk` directory. It appears under its final name
only once it is complete (written to a temp dir, then renamed), so a killed run never leaves a
half-written entry that a later run would trust. Beside the data it holds the sha256 of every file
written (`CONTENT_FILE`), checked on every read: an entry whose bytes changed since it was built
(tampered, or damaged on disk), or that fails its shape check, is moved aside and rebuilt, with a
warning naming it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from collections.abc import Callable, Iterator

import datasets

from xlm.errors import XlmWarning


CONTENT_FILE = "xlm_content.json"


class CacheWarning(XlmWarning):
    """A cache entry was unreadable or had changed, and has been rebuilt."""


def default_cache_root() -> Path:
    """``$XLM_CACHE_DIR``, else ``$XDG_CACHE_HOME/xlm`` (``~/.cache/xlm``), as HF's caches follow XDG."""
    root = os.environ.get("XLM_CACHE_DIR")
    return Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xlm"


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


def _content(directory: Path) -> dict[str, str]:
    """sha256 of every file in an entry (but the record of them)."""
    out = {}
    for file in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != CONTENT_FILE):
        digest = hashlib.sha256()
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        out[file.relative_to(directory).as_posix()] = digest.hexdigest()
    return out


def _check_content(path: Path) -> None:
    record = path / CONTENT_FILE
    if not record.is_file():
        raise ValueError(f"it has no {CONTENT_FILE} (the sha256 of its files)")
    expected, found = json.loads(record.read_text()), _content(path)
    # files added later (datasets' cache-*.arrow of a map) are not read: state.json, pinned here, lists the data
    changed = sorted(name for name in expected if expected[name] != found.get(name))
    if changed:
        raise ValueError(f"its content differs from what was built: {', '.join(changed)}")


def _read(path: Path, check: Callable[[datasets.Dataset], None]) -> datasets.Dataset:
    _check_content(path)
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
                warnings.warn(f"cache {path} fails its check ({type(err).__name__}: {err}); regenerating it",
                              warning, stacklevel=3)
                remove_dir(path)
        ds = build()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            ds.save_to_disk(str(tmp / "data"))
            (tmp / "data" / CONTENT_FILE).write_text(json.dumps(_content(tmp / "data"), indent=1) + "\n")
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
