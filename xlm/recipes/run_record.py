"""`<run dir>/run.json`: what a run was, in one file a person (or a script) reads afterwards: the
command that reproduces it, what it ran on (xlm version and git commit, torch, Python, CUDA, host,
device), when it started and ended, its wall time, and how it ended. Each segment of the run (the
first start and each resume) is a line of history.jsonl (`run_history`): run.json lists those
lines, each with where it ran and how it ended, rewritten when a segment starts and when it ends.
A segment that never said how it ended (kill -9, a lost machine) is listed as `killed`, one from
before run.json was written as `unknown`."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import xlm
from xlm.io import replace_file

from .run_history import Segment, read_segments

RUN_RECORD = "run.json"
TRAIN_COMMAND = "python -m xlm.recipes.train"


def started_in(run_dir: Path) -> Path | None:
    """The directory the run's last segment was started from (run.json's cwd), where its relative paths lead;
    None for a dir without a readable record (an export, a card)."""
    try:
        cwd = json.loads((run_dir / RUN_RECORD).read_text()).get("cwd")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(cwd) if isinstance(cwd, str) else None


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def git_commit(package_dir: Path | None = None) -> dict[str, Any] | None:
    """The commit of the checkout xlm is imported from (and whether tracked files differ from it);
    None for an installed wheel, or when git is not there to ask."""
    root = (package_dir or Path(xlm.__file__).resolve().parent).parent
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        changes = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "modified": bool(changes.strip())}


def environment(device: torch.device) -> dict[str, Any]:
    cuda = torch.version.cuda if torch.cuda.is_available() else None
    return {"xlm": xlm.__version__, "git": git_commit(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": cuda, "host": socket.gethostname(), "platform": platform.platform(),
            "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
            platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


def _key(segment: dict[str, Any]) -> tuple[Any, Any]:
    return segment.get("started"), segment.get("pid")


class RunRecord:
    """run.json of one segment's process: `start` when the segment starts, `end` when it ends."""

    def __init__(self, output_dir: Path, *, command: list[str], device: torch.device) -> None:
        self.path = output_dir / RUN_RECORD
        self.output_dir = output_dir
        self.command = f"{TRAIN_COMMAND} {shlex.join(command)}"
        self.device = device
        self.segment: Segment | None = None
        self._clock = time.monotonic()

    def start(self, segment: Segment) -> None:
        self.segment, self._clock = segment, time.monotonic()
        self._write({"environment": environment(self.device), "status": "running"})

    def end(self, status: str, step: int, error: str | None = None) -> None:
        """`status`: finished, interrupted, stopped at once, failed (with `error`)."""
        if self.segment is None:
            return
        self._write({"status": status, "ended": now(), "end_step": step,
                     "wall_seconds": round(time.monotonic() - self._clock, 2), **({"error": error} if error else {})})

    def _previous(self) -> dict[tuple[Any, Any], dict[str, Any]]:
        """What the run.json already there says of each segment (how it ended, where it ran)."""
        try:
            record = json.loads(self.path.read_text())
            return {_key(s): s for s in record.get("segments", []) if isinstance(s, dict)}
        except (OSError, ValueError, AttributeError):
            return {}

    def _write(self, current: dict[str, Any]) -> None:
        previous = self._previous()
        mine = _key(dict(self.segment or {}))
        segments = []
        for segment in read_segments(self.output_dir):
            known = previous.get(_key(segment), {})
            extra = {k: v for k, v in known.items() if k not in segment}
            if _key(segment) == mine:
                extra.update(current)
            elif not known:  # a segment of an xlm from before run.json
                extra["status"] = "unknown"
            elif known.get("status") == "running":  # its process is gone without a word: we hold the run dir
                extra["status"] = "killed"
            segments.append({**segment, **extra})
        last = segments[-1] if segments else {}
        record = {"command": self.command, "argv": sys.argv, "cwd": os.getcwd(), "status": last.get("status"),
                  "started": segments[0]["started"] if segments else None, "ended": last.get("ended"),
                  "wall_seconds": round(sum(s.get("wall_seconds", 0.0) for s in segments), 2),
                  "environment": last.get("environment"), "segments": segments}
        replace_file(self.path, json.dumps(record, indent=2, default=str) + "\n")
