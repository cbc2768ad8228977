"""Linear layers with weights laid out once for a fixed row count, for CPU decoding loops.

A KV-cache decoding step multiplies a few rows (one per sequence) by every weight matrix, and
does so again on every step, so a weight can be put once into the layout the fastest kernel
reads and reused on every call. Which kernel is fastest depends on the CPU, so each shape takes
the faster of two, timed once per process (`packed_linear`):

* oneDNN's linear on a weight reordered for exactly that many rows, with the activation in its
  epilogue. On the AMD EPYC this project first ran on, it decoded a 6 x 256 GPT-2-shaped model
  at batch 8 in 0.65-0.8 of the time of `F.linear` (benchmarks/RESULTS.md).
* BLAS `addmm` on the weight stored transposed and contiguous (as HF's GPT-2 `Conv1D` keeps
  it), the activation after it. On an Intel Xeon (AVX-512) it ran 1.1-3x faster than oneDNN's
  kernel at 8 rows, and the batch-8 decode took 0.81 of the time.

At a few rows each call costs more in fixed overhead than in arithmetic, so fewer calls pay
too: inside the block an attention's q, k and v projections run as one matmul over their
concatenated weights (`MultiheadAttention.packed_qkv`) and a feed-forward's first projection
runs with its activation (`FeedForward.packed_activated`).

Only where it paid in those measurements: weights of at least `MIN_WEIGHT_ELEMENTS` (128 x 128
ran at half the speed reordered) and at least `MIN_ROWS` rows (one row takes torch's
matrix-vector path, which beat the reordered kernel on most shapes).

The laid-out copies exist only inside `prepacked_linears` (one per packed layer, as large as
its weight): weights must not change there, which holds under `torch.no_grad` sampling.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import MultiheadAttention
from .feed_forward import FeedForward

MIN_WEIGHT_ELEMENTS = 1 << 16  # 256 x 256
MIN_ROWS = 2
# xlm activation name -> oneDNN post-op (attr, algorithm); SwiGLU's gate takes swish = SiLU
EPILOGUES = {"gelu": ("gelu", "none"), "gelu_tanh": ("gelu", "tanh"), "relu": ("relu", ""), "swiglu": ("swish", "")}
# the same activations applied after a BLAS matmul
AFTER_MATMUL: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu, "swiglu": F.silu}
Kernel = Literal["onednn", "blas"]
KERNELS: tuple[Kernel, ...] = ("onednn", "blas")
# (rows, in, out, activation, has bias, threads) -> the kernel that ran faster in this process
_FASTER_KERNEL: dict[tuple, Kernel] = {}


def can_prepack(module: nn.Module) -> bool:
    """True where reordering pays and is possible: fp32 weights on CPU with torch's oneDNN ops."""
    weight = next((m.weight for m in module.modules() if isinstance(m, nn.Linear)), None)
    return (weight is not None and weight.device.type == "cpu" and weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class PackedLinear:
    """activation(x W^T + b) with W laid out once for `kernel` and inputs of exactly `rows` rows;
    callers ask `applies_to` first and take the unpacked path for anything else (other row counts,
    autograd, autocast, other dtypes)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, rows: int, *, activation: str | None = None,
                 kernel: Kernel = "onednn") -> None:
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        self.rows = rows
        self.in_features = weight.size(1)
        self.kernel = kernel
        self.bias = bias.detach() if bias is not None else None
        self.activation = activation
        if kernel == "onednn":
            self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)
            self.attr, self.algorithm = EPILOGUES[activation] if activation is not None else ("none", "")
        else:
            self.weight = weight.detach().t().contiguous()

    def applies_to(self, x: Tensor) -> bool:
        return not (torch.is_grad_enabled() or torch.is_autocast_enabled("cpu") or x.dtype != torch.float32
                    or x.numel() != self.rows * self.in_features)

    def __call__(self, x: Tensor) -> Tensor:
        if self.kernel == "onednn":
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, self.attr, [], self.algorithm)
        rows = x.reshape(self.rows, self.in_features)
        out = torch.mm(rows, self.weight) if self.bias is None else torch.addmm(self.bias, rows, self.weight)
        if self.activation is not None:
            out = AFTER_MATMUL[self.activation](out)
        return out.view(*x.shape[:-1], out.size(-1))


def packed_linear(weight: Tensor, bias: Tensor | None, rows: int, *, activation: str | None = None,
                  kernel: Kernel | Literal["auto"] = "auto") -> PackedLinear:
    """A PackedLinear on `kernel`; "auto" takes whichever kernel ran faster at this shape, timed on
    the first call for it in this process (a few dozen calls on random rows) and remembered."""
    if kernel != "auto":
        return PackedLinear(weight, bias, rows, activation=activation, kernel=kernel)
    key = (rows, weight.size(1), weight.size(0), activation, bias is not None, torch.get_num_threads())
    if key in _FASTER_KERNEL:
        return PackedLinear(weight, bias, rows, activation=activation, kernel=_FASTER_KERNEL[key])
    candidates = [PackedLinear(weight, bias, rows, activation=activation, kernel=k) for k in KERNELS]
    x = torch.randn(rows, weight.size(1), dtype=weight.dtype)
    seconds: list[list[float]] = [[] for _ in candidates]
    with torch.no_grad():
        for repeat in range(12):  # interleaved, the first two as warm-up
            for candidate, times in zip(candidates, seconds):
                start = time.perf_counter()
                candidate(x)
                if repeat >= 2:
                    times.append(time.perf_counter() - start)
    fastest = min(range(len(candidates)), key=lambda i: statistics.median(seconds[i]))
    _FASTER_KERNEL[key] = candidates[fastest].kernel
    return candidates[fastest]


class _PrepackedForward:
    """A Linear's forward that takes its PackedLinear where that applies and its own forward elsewhere."""

    def __init__(self, linear: nn.Linear, rows: int, kernel: Kernel | Literal["auto"]) -> None:
        self.linear = linear
        self.packed = packed_linear(linear.weight, linear.bias, rows, kernel=kernel)

    def __call__(self, x: Tensor) -> Tensor:
        if self.packed.applies_to(x):
            return self.packed(x)
        return type(self.linear).forward(self.linear, x)


@contextmanager
def prepacked_linears(module: nn.Module, rows: int, *, kernel: Kernel | Literal["auto"] = "auto") -> Iterator[None]:
    """Within the block, `rows`-row inputs take weights laid out once on entry for `kernel` (see
    `packed_linear`): each attention's q/k/v as one matmul, each feed-forward's first projection
    with its activation, and every other large `nn.Linear` on its own; the layers are as they were
    on exit. A no-op where `can_prepack` is False or `rows < MIN_ROWS`."""
    if rows < MIN_ROWS or not can_prepack(module):
        yield
        return
    fused: list[tuple[nn.Module, str]] = []
    covered: set[nn.Linear] = set()  # their work is done by a fused matmul
    for sub in module.modules():  # one fused by an enclosing block stays as it is
        if isinstance(sub, MultiheadAttention):
            qkv = sub.qkv_projections
            if sub.packed_qkv is None and sum(p.weight.numel() for p in qkv) >= MIN_WEIGHT_ELEMENTS:
                sub.packed_qkv = packed_linear(*sub.qkv_weight_and_bias(), rows, kernel=kernel)
                fused.append((sub, "packed_qkv"))
            if sub.packed_qkv is not None:
                covered.update(qkv)
        elif isinstance(sub, FeedForward):
            first = sub.gate_proj if sub.activation == "swiglu" else sub.up_proj
            if sub.packed_activated is None and first.weight.numel() >= MIN_WEIGHT_ELEMENTS:
                sub.packed_activated = packed_linear(first.weight, first.bias, rows, activation=sub.activation,
                                                    kernel=kernel)
                fused.append((sub, "packed_activated"))
            if sub.packed_activated is not None:
                covered.add(first)
    # a layer already packed by an enclosing block ("forward" in its __dict__) stays as it is
    linears = [m for m in module.modules() if type(m) is nn.Linear and m.weight.numel() >= MIN_WEIGHT_ELEMENTS
               and "forward" not in m.__dict__ and m not in covered]
    for linear in linears:
        linear.forward = _PrepackedForward(linear, rows, kernel)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for linear in linears:
            del linear.forward
        for sub, attribute in fused:
            setattr(sub, attribute, None)
