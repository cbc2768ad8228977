"""trainer.keep_best: which checkpoint has the best validation metric so far. It is named in
checkpoints/best.json for people and tools, saved in each checkpoint's trainer state (a resumed run
goes on from the best it had, not from a file a crash may have left behind), and never pruned.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from xlm.errors import XlmWarning
from xlm.io import replace_file

from .checkpoint import checkpoint_name
from .config import ConfigError

BEST_FILE = "best.json"


class BestCheckpoint(TypedDict):
    step: int
    checkpoint: str  # its dir in the checkpoints dir
    metric: str
    value: float
    mode: str  # "min" | "max"


def best_mode(metric: str, mode: str | None) -> str:
    """`mode`, or what the metric's name implies: lower is better for a loss or an nll."""
    return mode or ("min" if "loss" in metric or "nll" in metric else "max")


@dataclass(kw_only=True)
class BestCheckpointTracker:
    root: Path  # the checkpoints dir
    metric: str
    mode: str
    best: BestCheckpoint | None = None
    on_disk: int | None = None  # the step best.json names

    def protected(self) -> set[int]:
        """The best checkpoint, and the one best.json names until it is rewritten (a crash in between
        leaves best.json naming a checkpoint that is still there)."""
        return {step for step in (self.best and self.best["step"], self.on_disk) if step is not None}

    def offer(self, step: int, metrics: dict[str, float]) -> bool:
        """Whether `metrics`, evaluated at `step`, beat the best so far (then they are the best)."""
        if self.metric not in metrics:
            raise ConfigError(f"trainer.best_metric={self.metric!r} is not a metric of this run's evaluation; "
                              f"it gives {', '.join(sorted(metrics))}")
        value = float(metrics[self.metric])
        if not math.isfinite(value) or self.best is not None and not (
                value < self.best["value"] if self.mode == "min" else value > self.best["value"]):
            return False
        self.best = BestCheckpoint(step=step, checkpoint=checkpoint_name(step), metric=self.metric, value=value,
                                   mode=self.mode)
        return True

    def publish(self) -> None:
        """Writes best.json, once the best checkpoint is written."""
        assert self.best is not None
        replace_file(self.root / BEST_FILE, json.dumps(self.best, indent=2) + "\n")
        self.on_disk = self.best["step"]

    def restore(self, best: BestCheckpoint | None) -> bool:
        """Takes the best as of a resumed checkpoint, when it was chosen alike and is still there."""
        if best is None:
            return False
        if (best["metric"], best["mode"]) != (self.metric, self.mode):
            print(f"note: the best checkpoint so far was chosen by {best['mode']} {best['metric']}; choosing by "
                  f"{self.mode} {self.metric} from now on", file=sys.stderr, flush=True)
            return False
        if not (self.root / best["checkpoint"]).is_dir():
            warnings.warn(f"the best checkpoint so far, {best['checkpoint']}, is no longer in {self.root}; "
                          f"the best is chosen anew from the next evaluation", XlmWarning, stacklevel=2)
            return False
        self.best = best
        return True
