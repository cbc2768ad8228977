"""Linear layers with weights laid out once for a fixed row count, for CPU decoding loops.

A KV-cache decoding step multiplies a few rows (one per sequence) by every weight matrix, and
does so again on every step, so a weight can be put once into the layout the fastest kernel
reads and reused on every call. Which kernel is fastest depends on the CPU, so a model takes
the faster of two, timed on its own matmuls once per process (`_faster_kernel_layers`):

* oneDNN's linear on a weight reordered for exactly that many rows, with the activation in its
  epilogue. On the AMD EPYC this project first ran on, it decoded a 6 x 256 GPT-2-shaped model
  at batch 8 in 0.65-0.8 of the time of `F.linear` (benchmarks/RESULTS.md).
* BLAS `addmm` on the weight stored transposed and contiguous (as HF's GPT-2 `Conv1D` keeps
  it), the activation after it. On an Intel Xeon (AVX-512) it ran 1.1-3x faster than oneDNN's
  kernel at 8 rows, and the batch-8 decode took 0.81 of the time of oneDNN's.

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
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import MultiheadAttention
from ..feed_forward import FeedForward

MIN_WEIGHT_ELEMENTS = 1 << 16  # 256 x 256
MIN_ROWS = 2
# xlm activation name -> oneDNN post-op (attr, algorithm); SwiGLU's gate takes swish = SiLU
EPILOGUES = {"gelu": ("gelu", "none"), "gelu_tanh": ("gelu", "tanh"), "relu": ("relu", ""), "swiglu": ("swish", "")}
# the same activations applied after a BLAS matmul
AFTER_MATMUL: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu, "swiglu": F.silu}
Kernel = Literal["onednn", "blas"]
KERNELS: tuple[Kernel, ...] = ("onednn", "blas")
# (rows, threads, each site's shape) -> the kernel that ran a module's matmuls faster in this process
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


@dataclass(frozen=True)
class _PackSite:
    """One matmul of a decoding step that will run on a laid-out weight, and where it goes."""

    weight: Tensor
    bias: Tensor | None
    activation: str | None
    install: Callable[[PackedLinear], None]
    uninstall: Callable[[], None]

    @property
    def shape_key(self) -> tuple:
        return (self.weight.size(0), self.weight.size(1), self.activation, self.bias is not None)

    def pack(self, rows: int, kernel: Kernel) -> PackedLinear:
        return PackedLinear(self.weight, self.bias, rows, activation=self.activation, kernel=kernel)


def _pass_seconds(layers: list[PackedLinear], inputs: list[Tensor]) -> float:
    start = time.perf_counter()
    for layer, x in zip(layers, inputs):
        layer(x)
    return time.perf_counter() - start


def _faster_kernel_layers(sites: list[_PackSite], rows: int) -> list[PackedLinear]:
    """Each kernel's layers for every site, timed over the whole list in module order, as a decoding
    step runs them: weights then come from beyond the core's cache as they do in the loop, and one
    kernel serves all (mixing them ran slower than either alone on the Intel Xeon, even where each
    won its own shape in isolation). The faster list is remembered per structure and thread count."""
    key = (rows, torch.get_num_threads(), tuple(site.shape_key for site in sites))
    if key in _FASTER_KERNEL:
        return [site.pack(rows, _FASTER_KERNEL[key]) for site in sites]
    candidates = {kernel: [site.pack(rows, kernel) for site in sites] for kernel in KERNELS}
    inputs = [torch.randn(rows, site.weight.size(1), dtype=site.weight.dtype) for site in sites]
    seconds: dict[Kernel, list[float]] = {kernel: [] for kernel in KERNELS}
    with torch.no_grad():
        for repeat in range(10):  # interleaved, the first two as warm-up
            for kernel, layers in candidates.items():
                elapsed = _pass_seconds(layers, inputs)
                if repeat >= 2:
                    seconds[kernel].append(elapsed)
    fastest = min(KERNELS, key=lambda kernel: statistics.median(seconds[kernel]))
    _FASTER_KERNEL[key] = fastest
    return candidates[fastest]


class _PrepackedForward:
    """A Linear's forward that takes its PackedLinear where that applies and its own forward elsewhere."""

    def __init__(self, linear: nn.Linear, packed: PackedLinear) -> None:
        self.linear = linear
        self.packed = packed

    def __call__(self, x: Tensor) -> Tensor:
        if self.packed.applies_to(x):
            return self.packed(x)
        return type(self.linear).forward(self.linear, x)


def _attribute_site(owner: nn.Module, attribute: str, weight: Tensor, bias: Tensor | None,
                    activation: str | None = None) -> _PackSite:
    return _PackSite(weight, bias, activation, install=lambda packed: setattr(owner, attribute, packed),
                     uninstall=lambda: setattr(owner, attribute, None))


def _linear_site(linear: nn.Linear) -> _PackSite:
    def install(packed: PackedLinear) -> None:
        linear.forward = _PrepackedForward(linear, packed)  # type: ignore[method-assign]

    def uninstall() -> None:
        del linear.forward

    return _PackSite(linear.weight, linear.bias, None, install=install, uninstall=uninstall)


def _pack_sites(module: nn.Module) -> list[_PackSite]:
    """The matmuls to lay out, in module order: each attention's q/k/v as one, each feed-forward's
    first projection with its activation, every other large plain `nn.Linear`. What an enclosing
    block already packed stays as it is, and so do the linears it covers."""
    sites: list[_PackSite] = []
    covered: set[nn.Module] = set()  # their work is done by a fused matmul
    for sub in module.modules():  # pre-order: a block comes before the linears it covers
        if isinstance(sub, MultiheadAttention):
            qkv = sub.qkv_projections
            packs = sub.packed_qkv is None and sum(p.weight.numel() for p in qkv) >= MIN_WEIGHT_ELEMENTS
            if packs:
                sites.append(_attribute_site(sub, "packed_qkv", *sub.qkv_weight_and_bias()))
            if packs or sub.packed_qkv is not None:
                covered.update(qkv)
        elif isinstance(sub, FeedForward):
            first = sub.gate_proj if sub.activation == "swiglu" else sub.up_proj
            packs = sub.packed_activated is None and first.weight.numel() >= MIN_WEIGHT_ELEMENTS
            if packs:
                sites.append(_attribute_site(sub, "packed_activated", first.weight, first.bias, sub.activation))
            if packs or sub.packed_activated is not None:
                covered.add(first)
        elif (type(sub) is nn.Linear and sub.weight.numel() >= MIN_WEIGHT_ELEMENTS
              and "forward" not in sub.__dict__ and sub not in covered):
            sites.append(_linear_site(sub))
    return sites


@contextmanager
def prepacked_linears(module: nn.Module, rows: int, *, kernel: Kernel | Literal["auto"] = "auto") -> Iterator[None]:
    """Within the block, `rows`-row inputs take weights laid out once on entry for `kernel` (the
    sites of `_pack_sites`); the layers are as they were on exit. "auto" takes the kernel that ran
    the module's matmuls faster (`_faster_kernel_layers`), which builds both layouts on the first
    entry for a structure. A no-op where `can_prepack` is False or `rows < MIN_ROWS`."""
    if kernel != "auto" and kernel not in KERNELS:
        raise ValueError(f"kernel must be 'auto' or one of {KERNELS}, got {kernel!r}")
    sites = _pack_sites(module) if rows >= MIN_ROWS and can_prepack(module) else []
    if not sites:
        yield
        return
    if kernel == "auto":
        layers = _faster_kernel_layers(sites, rows)
    else:
        layers = [site.pack(rows, kernel) for site in sites]
    for site, layer in zip(sites, layers):
        site.install(layer)
    try:
        yield
    finally:
        for site in sites:
            site.uninstall()
