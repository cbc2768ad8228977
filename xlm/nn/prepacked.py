"""Linear layers with weights reordered once for a fixed row count, for CPU decoding loops.

A KV-cache decoding step multiplies a few rows (one per sequence) by every weight matrix, and
does so again on every step. On CPU, oneDNN can reorder a weight once into the blocked layout
its kernel reads for a given number of rows and reuse it on every call; at 2-16 rows that ran
1.2-4x faster than `F.linear` on weights from 256 x 1024 up (this project's 2-core CPU), and a
6 x 256 GPT-2-shaped model decodes at batch 8 in about 0.8 of the time, with the same tokens
(benchmarks/RESULTS.md).

At a few rows each call costs more in fixed overhead than in arithmetic, so fewer calls pay
too: inside the block an attention's q, k and v projections run as one matmul over their
concatenated weights (`MultiheadAttention.packed_qkv`) and a feed-forward's first projection
runs with its activation in oneDNN's epilogue (`FeedForward.packed_activated`): 0.585 -> 0.497 s
for the batch-8 benchmark, the same tokens.

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

from .attention import MultiheadAttention
from .feed_forward import FeedForward

MIN_WEIGHT_ELEMENTS = 1 << 16  # 256 x 256
MIN_ROWS = 2
# xlm activation name -> oneDNN post-op (attr, algorithm); SwiGLU's gate takes swish = SiLU
EPILOGUES = {"gelu": ("gelu", "none"), "gelu_tanh": ("gelu", "tanh"), "relu": ("relu", ""), "swiglu": ("swish", "")}


def can_prepack(module: nn.Module) -> bool:
    """True where reordering pays and is possible: fp32 weights on CPU with torch's oneDNN ops."""
    weight = next((m.weight for m in module.modules() if isinstance(m, nn.Linear)), None)
    return (weight is not None and weight.device.type == "cpu" and weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class PackedLinear:
    """activation(x W^T + b) with W reordered once for inputs of exactly `rows` rows; callers ask
    `applies_to` first and take the unpacked path for anything else (other row counts, autograd,
    autocast, other dtypes)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, rows: int, *, activation: str | None = None) -> None:
        self.rows = rows
        self.in_features = weight.size(1)
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)
        self.bias = bias.detach() if bias is not None else None
        self.attr, self.algorithm = EPILOGUES[activation] if activation is not None else ("none", "")

    def applies_to(self, x: Tensor) -> bool:
        return not (torch.is_grad_enabled() or torch.is_autocast_enabled("cpu") or x.dtype != torch.float32
                    or x.numel() != self.rows * self.in_features)

    def __call__(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, self.attr, [], self.algorithm)


class _PrepackedForward:
    """A Linear's forward that takes its PackedLinear where that applies and its own forward elsewhere."""

    def __init__(self, linear: nn.Linear, rows: int) -> None:
        self.linear = linear
        self.packed = PackedLinear(linear.weight, linear.bias, rows)

    def __call__(self, x: Tensor) -> Tensor:
        if self.packed.applies_to(x):
            return self.packed(x)
        return type(self.linear).forward(self.linear, x)


@contextmanager
def prepacked_linears(module: nn.Module, rows: int) -> Iterator[None]:
    """Within the block, `rows`-row inputs take weights reordered once on entry: each attention's
    q/k/v as one matmul, each feed-forward's first projection with its activation fused, and
    every other large `nn.Linear` on its own; the layers are as they were on exit. A no-op where
    `can_prepack` is False or `rows < MIN_ROWS`."""
    if rows < MIN_ROWS or not can_prepack(module):
        yield
        return
    fused: list[tuple[nn.Module, str]] = []
    covered: set[nn.Linear] = set()  # their work is done by a fused matmul
    for sub in module.modules():  # one fused by an enclosing block stays as it is
        if isinstance(sub, MultiheadAttention):
            qkv = sub.qkv_projections
            if sub.packed_qkv is None and sum(p.weight.numel() for p in qkv) >= MIN_WEIGHT_ELEMENTS:
                sub.packed_qkv = PackedLinear(*sub.qkv_weight_and_bias(), rows)
                fused.append((sub, "packed_qkv"))
            if sub.packed_qkv is not None:
                covered.update(qkv)
        elif isinstance(sub, FeedForward):
            first = sub.gate_proj if sub.activation == "swiglu" else sub.up_proj
            if sub.packed_activated is None and first.weight.numel() >= MIN_WEIGHT_ELEMENTS:
                sub.packed_activated = PackedLinear(first.weight, first.bias, rows, activation=sub.activation)
                fused.append((sub, "packed_activated"))
            if sub.packed_activated is not None:
                covered.add(first)
    # a layer already packed by an enclosing block ("forward" in its __dict__) stays as it is
    linears = [m for m in module.modules() if type(m) is nn.Linear and m.weight.numel() >= MIN_WEIGHT_ELEMENTS
               and "forward" not in m.__dict__ and m not in covered]
    for linear in linears:
        linear.forward = _PrepackedForward(linear, rows)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for linear in linears:
            del linear.forward
        for sub, attribute in fused:
            setattr(sub, attribute, None)
