"""The divergence guard: stops a run whose training loss left its own range while staying finite
(a learning rate far too high), and tells the trainer which checkpoint is the last good one so
that pruning keeps it.

The reference is the lowest median of `window` consecutive losses the run has had (one lucky
batch does not lower it, a slow climb does not raise it), at least `min_loss` (noise around a loss
near zero is no divergence). The run stops when the median of the last `patience` losses is above
`factor` x the reference: a divergence lasts, one heavy-tailed batch (MDLM's importance-weighted
loss) does not. Weights are good when the loss they gave was within sqrt(factor) x the reference,
halfway to the stop on a log scale, so that weights already on their way up do not count; the
step of the newest good ones is `good_step`. Checked on the loss each step computes anyway, and
saved with each checkpoint so that a resumed run judges alike.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any


@dataclass(kw_only=True)
class DivergenceGuard:
    window: int  # 0 turns the guard off
    factor: float
    min_loss: float
    patience: int
    recent: list[float] = field(default_factory=list)
    reference: float | None = None  # the lowest median of `window` consecutive losses so far
    good_step: int = 0  # the step of the newest good weights (0: the initial ones)

    def threshold(self, factor: float | None = None) -> float | None:
        """The loss above which a step counts against the run (None until a loss was seen)."""
        if self.window <= 0 or self.reference is None:
            return None
        return (self.factor if factor is None else factor) * max(self.reference, self.min_loss)

    def recent_median(self) -> float:
        return statistics.median(self.recent[-self.patience:])

    def check(self, step: int, loss: float) -> float | None:
        """Takes step `step`'s loss (computed with the weights of step - 1). Returns the threshold when
        the median of the last `patience` losses is above it (the run diverged), else None."""
        if self.window <= 0:
            return None
        limit, good = self.threshold(), self.threshold(self.factor ** 0.5)
        self.recent = [*self.recent, loss][-max(self.window, self.patience):]
        if good is None or loss <= good:
            self.good_step = step - 1
        if limit is not None and self.recent_median() > limit:
            return limit
        median = statistics.median(self.recent[-self.window:])
        self.reference = median if self.reference is None else min(self.reference, median)
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "reference": self.reference, "good_step": self.good_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recent = [float(x) for x in state["recent"]]
        self.reference = None if state["reference"] is None else float(state["reference"])
        self.good_step = int(state["good_step"])
