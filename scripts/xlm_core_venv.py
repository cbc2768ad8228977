"""xlm-core's venv, shared by scripts/cross_check_xlm_core.py and benchmarks/xlm_core_peer.py.

xlm-core's package is also named `xlm`, so it gets a venv of its own, made on first use (torch==2.13.0 first, then
xlm-core and xlm-models, which holds its model classes, from the package index), and its programs run in their own
process, isolated (`python -I`: neither PYTHONPATH nor the script's directory on its path), without network for the
hub clients.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from xlm.errors import XlmUserError

XLM_CORE = ("xlm-core==0.3.1", "xlm-models==0.3.1")
TORCH = "torch==2.13.0"  # installed first: a looser requirement would pull a CUDA build
DEFAULT_VENV = Path.home() / ".cache" / "xlm" / "xlm-core-venv"


class XlmCoreRunError(XlmUserError, RuntimeError):
    """xlm-core's venv could not be made, or a program in it failed; the message has the command and the end of
    its output."""


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for xlm-core's processes: none of our paths, no network for the hub clients."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled", **extra}


def run(command: Sequence[str], *, what: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Runs `command`; its output, or an XlmUserError naming `what`, the command and the end of its output."""
    proc = subprocess.run(list(command), cwd=cwd, env=env or clean_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise XlmCoreRunError(f"{what} failed (exit {proc.returncode}): {' '.join(command)}\n{tail}")
    return proc.stdout


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def venv_is_ready(venv: Path) -> bool:
    """The venv holds the pinned xlm-core and xlm-models."""
    python = venv_python(venv)
    if not python.is_file():
        return False
    names = tuple(requirement.split("==")[0] for requirement in XLM_CORE)
    probe = f"import importlib.metadata as m; print(*(f'{{n}}=={{m.version(n)}}' for n in {names!r}))"
    proc = subprocess.run([str(python), "-I", "-c", probe], env=clean_env(), capture_output=True, text=True)
    return proc.returncode == 0 and proc.stdout.split() == list(XLM_CORE)


def ensure_venv(venv: Path) -> float:
    """Makes (or completes) the venv unless it is ready; the seconds the install took (0 when reused)."""
    if venv_is_ready(venv):
        return 0.0
    start = time.perf_counter()
    if not venv_python(venv).is_file():
        run([sys.executable, "-m", "venv", str(venv)], what=f"making the venv {venv}")
    pip = [str(venv_python(venv)), "-m", "pip", "install", "-q"]
    run([*pip, TORCH], what=f"installing {TORCH} into {venv}")
    run([*pip, *XLM_CORE], what=f"installing {' and '.join(XLM_CORE)} into {venv}")
    return time.perf_counter() - start


def run_in_venv(venv: Path, script: Path, args: Sequence[str], *, what: str, cwd: Path | None = None,
                threads: int | None = None) -> float:
    """`python -I SCRIPT ARGS` in xlm-core's venv (OMP_NUM_THREADS=threads where given); the seconds it took."""
    start = time.perf_counter()
    env = clean_env(OMP_NUM_THREADS=str(threads)) if threads else clean_env()
    run([str(venv_python(venv)), "-I", str(script), *args], what=what, cwd=cwd, env=env)
    return time.perf_counter() - start
