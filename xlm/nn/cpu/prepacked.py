"""Linear layers with weights laid out once for a fixed row count, for CPU decoding loops.

A KV-cache decoding step multiplies a few rows (one per sequence) by every weight matrix, and
does so again on every step, so a weight can be put once into the layout the fastest kernel
reads and reused on every call. Which kernel is fastest depends on the CPU (each of these won on
one of the machines measured, benchmarks/RESULTS.md), so a model takes the faster of two, timed
on its own matmuls once per process (`_faster_kernel_layers`):

* oneDNN's linear on a weight reordered for exactly that many rows, with the activation in its
  epilogue;
* BLAS `addmm` on the weight stored transposed and contiguous (as HF's GPT-2 `Conv1D` keeps
  it), the activation after it.

At a few rows each call costs more in fixed overhead than in arithmetic, so fewer calls pay
too: inside the block an attention's q, k and v projections run as one matmul over their
concatenated weights (in place of `MultiheadAttention.project_qkv`) and a feed-forward's first
projection runs with its activation (in place of `FeedForward.hidden`).

Only where it paid in those measurements: weights of at least `MIN_WEIGHT_ELEMENTS` (smaller
ones ran slower reordered) and at least `MIN_ROWS` rows (one row takes torch's matrix-vector
path, which beat the reordered kernel on most shapes).

The laid-out copies exist only inside `prepacked_linears` (one per packed layer, as large as
its weight), set on the instances as stand-ins for their methods and removed on exit: weights
must not change there, which holds under `torch.no_grad` sampling.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import MultiheadAttention
from ..feed_forward import FeedForward
from .fused_qkv import qkv_weight_and_bias

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


# what a packed matmul's output becomes in place of the method it stands in for, given the input
Finish = Callable[[Tensor, Tensor], Any]


class _PrepackedMethod:
    """Stands in for one module's method inside `prepacked_linears`: the packed matmul for inputs it
    applies to, the class's own method for anything else."""

    def __init__(self, module: nn.Module, method: str, packed: PackedLinear, finish: Finish) -> None:
        self.module, self.method, self.packed, self.finish = module, method, packed, finish

    def __call__(self, x: Tensor) -> Any:
        if self.packed.applies_to(x):
            return self.finish(self.packed(x), x)
        return getattr(type(self.module), self.method)(self.module, x)


def _as_is(out: Tensor, _x: Tensor) -> Tensor:
    return out


@dataclass(frozen=True)
class _PackSite:
    """One matmul of a decoding step that will run on a laid-out weight, and the method it replaces."""

    weight: Tensor
    bias: Tensor | None
    activation: str | None
    module: nn.Module
    method: str
    finish: Finish = _as_is

    @property
    def shape_key(self) -> tuple:
        return (self.weight.size(0), self.weight.size(1), self.activation, self.bias is not None)

    def pack(self, rows: int, kernel: Kernel) -> PackedLinear:
        return PackedLinear(self.weight, self.bias, rows, activation=self.activation, kernel=kernel)

    def install(self, packed: PackedLinear) -> None:
        setattr(self.module, self.method, _PrepackedMethod(self.module, self.method, packed, self.finish))

    def uninstall(self) -> None:
        delattr(self.module, self.method)


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


def _attention_site(attn: MultiheadAttention) -> _PackSite:
    sizes = [p.out_features for p in (attn.q_proj, attn.k_proj, attn.v_proj)]
    return _PackSite(*qkv_weight_and_bias(attn), None, attn, "project_qkv",
                     lambda out, _x: tuple(out.split(sizes, dim=-1)))


def _feed_forward_site(ffn: FeedForward) -> _PackSite:
    if ffn.activation == "swiglu":
        return _PackSite(ffn.gate_proj.weight, ffn.gate_proj.bias, "swiglu", ffn, "hidden",
                         lambda out, x: out * ffn.up_proj(x))
    return _PackSite(ffn.up_proj.weight, ffn.up_proj.bias, ffn.activation, ffn, "hidden")


def _pack_sites(module: nn.Module) -> list[_PackSite]:
    """The matmuls to lay out, in module order: each attention's q/k/v as one, each feed-forward's
    first projection with its activation, every other large plain `nn.Linear`. What an enclosing
    block already packed stays as it is, and so do the linears it covers."""
    sites: list[_PackSite] = []
    covered: set[nn.Module] = set()  # their work is done by a fused matmul
    for sub in module.modules():  # pre-order: a block comes before the linears it covers
        if isinstance(sub, MultiheadAttention):
            qkv = sub.q_proj, sub.k_proj, sub.v_proj
            packed = "project_qkv" in sub.__dict__  # by an enclosing prepacked_linears
            if not packed and sum(p.weight.numel() for p in qkv) >= MIN_WEIGHT_ELEMENTS:
                sites.append(_attention_site(sub))
                packed = True
            if packed:
                covered.update(qkv)
        elif isinstance(sub, FeedForward):
            first = sub.gate_proj if sub.activation == "swiglu" else sub.up_proj
            packed = "hidden" in sub.__dict__
            if not packed and first.weight.numel() >= MIN_WEIGHT_ELEMENTS:
                sites.append(_feed_forward_site(sub))
                packed = True
            if packed:
                covered.add(first)
        elif (type(sub) is nn.Linear and sub.weight.numel() >= MIN_WEIGHT_ELEMENTS
              and "forward" not in sub.__dict__ and sub not in covered):
            sites.append(_PackSite(sub.weight, sub.bias, None, sub, "forward"))
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
