"""Writes that run out of space: real failed writes (a file size limit, RLIMIT_FSIZE, fails them with
EFBIG as a full disk does with ENOSPC) are one DiskFullError naming the file, and leave nothing half-written."""

import contextlib
import errno
import resource
import signal

import pytest
import torch
from safetensors.torch import load_file

import xlm
from xlm.errors import XlmUserError
from xlm.io import DiskFullError, replace_file, save_safetensors, write_atomically, write_file
from xlm.models.arlm.predictor import ArlmSamplerConfig
from xlm.run_dir import write_run_dir


@contextlib.contextmanager
def file_size_limit(size: int):
    """Files of this process cannot grow past `size` bytes (only the soft limit moves: it can be raised back)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


BIG = {"w": torch.arange(50_000, dtype=torch.float32)}  # 200 kB


def _fill(tmp):
    save_safetensors({"small": torch.zeros(4)}, tmp / "small.safetensors")
    write_file(tmp / "state.pt", lambda f: torch.save(BIG, f))  # torch alone reports `enforce fail`


def test_a_full_disk_names_the_file_and_leaves_the_dir_as_it_was(tmp_path):
    final = tmp_path / "step_000000001"
    write_atomically(final, lambda tmp: save_safetensors({"old": torch.ones(2)}, tmp / "old.safetensors"))
    with file_size_limit(64_000), pytest.raises(DiskFullError) as caught:
        write_atomically(final, _fill)
    err = caught.value
    assert str(err).startswith(f"disk full while writing {final / 'state.pt'} (File too large)")
    assert err.errno == errno.EFBIG and isinstance(err, XlmUserError) and isinstance(err, OSError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000000001"]  # no temp dir left
    assert sorted(p.name for p in final.iterdir()) == ["old.safetensors"]
    assert load_file(final / "old.safetensors")["old"].tolist() == [1.0, 1.0]


def test_safetensors_and_plain_files_report_it_alike(tmp_path):
    with file_size_limit(64_000):
        with pytest.raises(DiskFullError, match=r"big.safetensors \(File too large\); the partial file was removed"):
            save_safetensors(BIG, tmp_path / "big.safetensors")
        (tmp_path / "best.json").write_text("old")
        with pytest.raises(DiskFullError, match=r"best.json \(File too large\); .*best.json is as it was"):
            replace_file(tmp_path / "best.json", "x" * 100_000)
    assert (tmp_path / "best.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json"]


def _fails(f):
    f.write(b"partial")
    raise ValueError("not this")


def test_other_write_errors_stay_what_they_are(tmp_path):
    with pytest.raises(ValueError, match="not this"):
        write_file(tmp_path / "f", _fails)
    with pytest.raises(ValueError, match="not this"):
        write_atomically(tmp_path / "d", lambda tmp: write_file(tmp / "f", _fails))
    assert list(tmp_path.iterdir()) == []


def test_a_run_dir_export_reports_it_alike(tmp_path):
    model = xlm.create_model("arlm_tiny", vocab_size=27)  # 75 kB of weights
    with file_size_limit(40_000), pytest.raises(DiskFullError, match=r"model.safetensors \(File too large\)"):
        write_run_dir(tmp_path / "run", model=model, family="arlm", arch="arlm_tiny", model_config=model.config,
                      sampler_config=ArlmSamplerConfig(), tokenizer=None, task=None, train_config=None, metrics={})
    assert not (tmp_path / "run" / "model.safetensors").exists()
