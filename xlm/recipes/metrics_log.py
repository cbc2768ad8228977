"""Training and validation metrics as metrics.jsonl (and TensorBoard when installed), written by
rank 0 and cut back to the resumed step so that no step is logged twice.

`tensorboard`: "auto" writes TensorBoard's event files when the package is installed and says
nothing when it is not; "true" says once that it is missing and how to install it; metrics.jsonl is
written either way, so a missing TensorBoard never loses a metric."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from xlm.io import replace_file


def _step(line: str) -> float:
    """A line's step; infinite for a line a kill cut short (dropped with the steps after the checkpoint)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


class MetricsLog:
    """metrics.jsonl (and TensorBoard when installed); rank 0 only."""

    def __init__(self, output_dir: Path, *, enabled: bool, tensorboard: str, resume_step: int) -> None:
        self.enabled = enabled
        self.path = output_dir / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # drop what was logged after the checkpoint we resume from
            kept = [line for line in self.path.read_text().splitlines() if _step(line) <= resume_step]
            replace_file(self.path, "".join(line + "\n" for line in kept))
        if tensorboard in ("auto", "true"):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if tensorboard == "true":
                    print(f"warning: trainer.tensorboard=true but the tensorboard package is not installed "
                          f"(pip install 'xlm[tb]'); metrics go to {self.path} only", file=sys.stderr, flush=True)
            else:
                self.writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=resume_step + 1)

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
