"""GPT-2's tanh-approximated GELU, with one compiled kernel for CPU training.

torch's CPU kernel for `F.gelu(x, approximate="tanh")` is bound by its vectorised tanh, slower
than the erf GELU both ways. The same function written as x·σ(2u), u = √(2/π)(x + 0.044715 x³)
(since (1 + tanh u)/2 = σ(2u)), compiles with inductor into one loop forward and one backward
over exp, faster than torch's kernel both ways (benchmarks/RESULTS.md). The compile is made once
per process, for inputs of every length (dynamic shapes, flattened to 1-D), and only where a
gradient is wanted on CPU: eval and decoding keep torch's kernel (or oneDNN's epilogue,
`xlm.nn.cpu.prepacked`), which needs no compiler.
Where compiling fails (no C++ compiler, an unsupported platform) it warns once and runs eager.
Set XLM_EAGER_GELU=1 to never compile. `CompiledGeluFeedForward` is how a model gets it:
`xlm.nn.cpu.accelerate_training` swaps it in for each tanh-GELU `FeedForward`.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from xlm.errors import XlmWarning

from ..feed_forward import FeedForward

_TWO_SQRT_2_OVER_PI = 2 * math.sqrt(2 / math.pi)
_CUBIC = 0.044715
# below this many elements a compiled call's fixed cost (guards, autograd wrapper) outweighs its gain
MIN_COMPILED_NUMEL = 1 << 15


def gelu_tanh_sigmoid_form(x: Tensor) -> Tensor:
    """0.5 x (1 + tanh u) as x·σ(2u): the same function, from ops that inductor fuses well."""
    return x * torch.sigmoid(x * (_TWO_SQRT_2_OVER_PI + (_TWO_SQRT_2_OVER_PI * _CUBIC) * x * x))


@functools.cache
def compiled_gelu_tanh() -> Callable[[Tensor], Tensor] | None:
    """The compiled sigmoid form, forward and backward built and run once on a probe; None where
    compiling is switched off or fails. The probe runs with grad on whatever mode the caller is in:
    built first under torch.no_grad (accelerate_training there), its backward failed, and the cached
    None left every later training step on the eager kernel."""
    if os.environ.get("XLM_EAGER_GELU") == "1":
        return None
    try:
        # with a symbolic length inductor would emit a serial loop; dynamic_threads keeps it parallel
        compiled = torch.compile(gelu_tanh_sigmoid_form, dynamic=True, fullgraph=True,
                                 options={"cpp.dynamic_threads": True})
        with torch.inference_mode(False), torch.enable_grad():
            probe = torch.linspace(-4, 4, 64, requires_grad=True)
            compiled(probe).sum().backward()
    except Exception as error:  # a missing compiler, platform or inductor option: several error types
        warnings.warn(f"the tanh GELU runs torch's eager CPU kernel, about half as fast in training: compiling "
                      f"its fused form failed ({type(error).__name__}: {str(error).strip()[:200]}). Install a "
                      "C++ compiler for torch.compile, or set XLM_EAGER_GELU=1 to skip the attempt.",
                      XlmWarning, stacklevel=3)
        return None
    return compiled


def gelu_tanh(x: Tensor) -> Tensor:
    """F.gelu(x, approximate="tanh"), through the compiled kernel when training on CPU."""
    if torch.compiler.is_compiling():  # inside a compiled model: inductor fuses this form, not its own tanh
        return gelu_tanh_sigmoid_form(x)
    # a dispatch mode (FlopCounterMode, fake tensors) cannot run a compiled function
    if (x.device.type == "cpu" and x.requires_grad and torch.is_grad_enabled() and x.is_contiguous()
            and x.numel() >= MIN_COMPILED_NUMEL and _get_current_dispatch_mode() is None):
        compiled = compiled_gelu_tanh()
        if compiled is not None:
            return compiled(x.view(-1)).view(x.shape)
    return F.gelu(x, approximate="tanh")


class CompiledGeluFeedForward(FeedForward):
    """A tanh-GELU FeedForward whose activation is `gelu_tanh`: compiled while training on CPU,
    torch's kernel elsewhere. Made from a built FeedForward by `xlm.nn.cpu.accelerate_training`."""

    def hidden(self, x: Float[Tensor, "... dim"]) -> Float[Tensor, "... ffn_dim"]:
        return gelu_tanh(self.up_proj(x))
