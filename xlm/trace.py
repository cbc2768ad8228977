"""Step-by-step records of how a sampler built its output, for `generate --trace`.

A predictor with `on_step` set calls it once per step with the rows as they now stand and the
positions it wrote in that step (appended, unmasked or inserted tokens). Nothing is recorded
when `on_step` is None, so sampling pays nothing for the option.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict

from jaxtyping import Bool, Int
from torch import Tensor


class TraceStep(TypedDict):
    step: int
    rows: list[list[int]]  # each row's tokens after the step
    changed: list[list[int]]  # per row, the positions in `rows[i]` written by the step


StepHook = Callable[[TraceStep], None]


def emit(hook: StepHook | None, step: int, sequences: Int[Tensor, "batch seq"],
         changed: Bool[Tensor, "batch seq"]) -> None:
    if hook is None:
        return
    hook({"step": step, "rows": sequences.tolist(),
          "changed": [row.nonzero().flatten().tolist() for row in changed]})
