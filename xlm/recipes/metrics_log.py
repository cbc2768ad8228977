"""Training and validation metrics as metrics.jsonl (and TensorBoard when installed), written by
rank 0 and cut back to the resumed step so that no step is logged twice."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    """metrics.jsonl (and TensorBoard when installed); rank 0 only."""

    def __init__(self, output_dir: Path, *, enabled: bool, tensorboard: bool, resume_step: int) -> None:
        self.enabled = enabled
        self.path = output_dir / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # drop what was logged after the checkpoint we resume from
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                pass
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
