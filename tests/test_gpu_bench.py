"""benchmarks/gpu_check.sh and benchmarks/gpu.py are ready for a GPU: without one, the dry run
parses, imports and runs every step at a toy size on the CPU, and the GPU tests skip with a reason."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu

ROOT = Path(__file__).resolve().parents[1]


def test_bf16_peak_comes_from_the_datasheet_table_by_device_name():
    assert gpu.bf16_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu.bf16_peak_flops("NVIDIA H200") == 989e12
    assert gpu.bf16_peak_flops("NVIDIA H100 PCIe") == 756e12  # the more specific name wins
    assert gpu.bf16_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu.bf16_peak_flops("NVIDIA GeForce RTX 3090") is None  # MFU is then left out, not guessed


def test_gpu_targets_compare_each_goal_with_the_measured_row():
    rows = gpu.gpu_targets({"gpt2_small": [{"device": "cuda", "hf_over_xlm": 1.3, "mfu": 0.4}],
                            "data_wait": [{"arch": "mlm_star", "num_workers": 2, "data_wait_steady": 0.01}]})
    assert [(r["measured"], r["met"]) for r in rows] == [(1.3, True), (0.4, False), (0.01, True)]
    assert [r["met"] for r in gpu.gpu_targets({"gpt2_small": [{"device": "cpu", "hf_over_xlm": 1.0,
                                                                "mfu": None}]})] == [False, False]


def test_dry_run_of_the_fast_sections(tmp_path):
    out = tmp_path / "bench.json"
    assert gpu.main(["--dry-run", "generate", "mdlm_cache", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["dry_run"] and result["device"] == "cpu" and result["bf16_peak_tflops"] is None
    assert all(row["same_tokens"] for section in ("generate", "mdlm_cache") for row in result[section])
    assert gpu.main(["--dry-run", "nope"]) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no GPU is")
def test_without_a_gpu_the_bench_says_so(capsys):
    assert gpu.main(["generate"]) == 2
    assert "no CUDA device here" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the CPU check")
def test_gpu_check_dry_run_runs_every_step(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    tests = (tmp_path / "tests.log").read_text()
    assert "needs a CUDA GPU" in tests and " skipped" in tests and "failed" not in tests
    result = json.loads((tmp_path / "bench.json").read_text())
    for section in gpu.SECTIONS:
        assert result[section], section
    assert {r["family"] for r in result["memory"]} == {"arlm", "hf_gpt2"}
    assert [r["num_workers"] for r in result["data_wait"]] == [0, 2]
