"""Linear layers with weights reordered once for a fixed row count, for CPU decoding loops.

A KV-cache decoding step multiplies a few rows (one per sequence) by every weight matrix, and
does so again on every step. On CPU, oneDNN can reorder a weight once into the blocked layout
its kernel reads for a given number of rows and reuse it on every call; at 2-16 rows that ran
1.2-4x faster than `F.linear` on weights from 256 x 1024 up (this project's 2-core CPU), and a
6 x 256 GPT-2-shaped model decodes at batch 8 in about 0.8 of the time, with the same tokens
(benchmarks/RESULTS.md).

Only where it paid in those measurements: weights of at least `MIN_WEIGHT_ELEMENTS` (128 x 128
ran at half the speed packed; packing from 256 x 256 up took the batch-8 ratio to HF `generate`
from 1.15-1.31 to 1.51-1.54, from 256 x 1024 up only to 1.45-1.48) and at least `MIN_ROWS` rows
(one row takes torch's matrix-vector path, which beat the reordered kernel on most shapes).

The reordered copies exist only inside `prepacked_linears` (one per packed layer, as large as
its weight): weights must not change there, which holds under `torch.no_grad` sampling.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn

MIN_WEIGHT_ELEMENTS = 1 << 16  # 256 x 256
MIN_ROWS = 2


def can_prepack(module: nn.Module) -> bool:
    """True where reordering pays and is possible: fp32 weights on CPU with torch's oneDNN ops."""
    weight = next((m.weight for m in module.modules() if isinstance(m, nn.Linear)), None)
    return (weight is not None and weight.device.type == "cpu" and weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class _PrepackedForward:
    """A Linear's forward that takes the reordered weight for fp32 inputs of exactly `rows` rows
    outside autograd and autocast, and the layer's own forward for anything else."""

    def __init__(self, linear: nn.Linear, rows: int) -> None:
        self.linear = linear
        self.rows = rows
        weight = linear.weight.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        self.bias = linear.bias.detach() if linear.bias is not None else None

    def __call__(self, x: Tensor) -> Tensor:
        if (torch.is_grad_enabled() or torch.is_autocast_enabled("cpu") or x.dtype != torch.float32
                or x.numel() != self.rows * self.linear.in_features):
            return type(self.linear).forward(self.linear, x)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


@contextmanager
def prepacked_linears(module: nn.Module, rows: int) -> Iterator[None]:
    """Within the block, each large `nn.Linear` of `module` computes `rows`-row inputs with a
    weight reordered once on entry; the layers are as they were on exit. A no-op where
    `can_prepack` is False or `rows < MIN_ROWS`."""
    if rows < MIN_ROWS or not can_prepack(module):
        yield
        return
    linears = [m for m in module.modules() if type(m) is nn.Linear and m.weight.numel() >= MIN_WEIGHT_ELEMENTS
               and "forward" not in m.__dict__]  # a layer already packed by an enclosing block stays as it is
    for linear in linears:
        linear.forward = _PrepackedForward(linear, rows)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for linear in linears:
            del linear.forward
