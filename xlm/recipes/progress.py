"""What a person watching a run sees: a bar on a terminal, plain lines in a redirected log (no `\\r`
or cursor escapes), and an ETA from steady-state steps only, so that the one-off warm-up of the
first steps (the compiled CPU GELU, allocator growth) does not promise hours for a run of minutes."""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import IO

from tqdm.auto import tqdm

WARMUP_STEPS = 2  # the first steps of each process, excluded from the step time the ETA uses
WINDOW = 50  # the ETA follows the mean of the last this many steady-state steps


def duration(seconds: float) -> str:
    """1:02:03, 2:03 or 0:04."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class Eta:
    """Seconds left, from the mean time of recent steady-state steps and the last evaluation's time."""

    warmup_steps: int = WARMUP_STEPS
    seen: int = 0
    step_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    eval_seconds: float | None = None

    def add_step(self, seconds: float) -> None:
        self.seen += 1
        if self.seen > self.warmup_steps:
            self.step_seconds.append(seconds)

    def seconds_per_step(self) -> float | None:
        return sum(self.step_seconds) / len(self.step_seconds) if self.step_seconds else None

    def seconds_left(self, steps_left: int, evals_left: int = 0) -> float | None:
        """None while the first steps are still warming up."""
        per_step = self.seconds_per_step()
        if per_step is None:
            return None
        return steps_left * per_step + evals_left * (self.eval_seconds or 0.0)

    def describe(self, steps_left: int, evals_left: int = 0) -> str:
        left = self.seconds_left(steps_left, evals_left)
        return "eta after warm-up" if left is None else f"eta {duration(left)}"


class Progress:
    """A tqdm bar when `stream` is a terminal, else a plain line every `every_s` seconds (and at the
    first and last update); nothing at all when disabled."""

    def __init__(self, *, desc: str, total: int, initial: int = 0, enabled: bool, every_s: float,
                 stream: IO[str] | None = None, unit: str = "step") -> None:
        self.stream = stream or sys.stderr
        self.desc, self.total, self.n, self.every_s, self.unit = desc, total, initial, every_s, unit
        self.enabled = enabled
        self.terminal = enabled and self.stream.isatty()
        self.bar = (tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True,
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
                    if self.terminal else None)
        self._last_line = float("-inf")

    def update(self, n: int, fields: dict[str, str]) -> None:
        """Sets the count to `n` with `fields` (loss, speed, eta...) shown beside it."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n - self.n)
            self.bar.set_postfix_str(", ".join(f"{k} {v}" for k, v in fields.items()), refresh=True)
        elif time.monotonic() - self._last_line >= self.every_s or n in (self.total, 1):
            self._last_line = time.monotonic()
            pct = f"{100 * n / max(self.total, 1):.0f}%"
            self._line(f"{self.desc} {self.unit} {n}/{self.total} ({pct})  " +
                       "  ".join(f"{k} {v}" for k, v in fields.items()))
        self.n = n

    def note(self, text: str) -> None:
        """A line that stays (an evaluation's result), above the bar on a terminal."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            self._line(text)

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
