"""Every test session gets its own data cache, so nothing outside the run is read or written."""

import os
import tempfile

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if "XLM_CACHE_DIR" not in os.environ:
        os.environ["XLM_CACHE_DIR"] = tempfile.mkdtemp(prefix="xlm-test-cache-")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    # one thread per process, here and in every subprocess a test starts: the suite runs next to its own
    # subprocesses on small hosts, where two threads each would trip the trainer's busy-host warning
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
