"""Every test session gets its own data cache, so nothing outside the run is read or written."""

import os
import tempfile

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if "XLM_CACHE_DIR" not in os.environ:
        os.environ["XLM_CACHE_DIR"] = tempfile.mkdtemp(prefix="xlm-test-cache-")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
