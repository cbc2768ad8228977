"""CPU training kernels, applied to a built model by swapping the class of its modules.

Each `MultiheadAttention` becomes a `FusedQkvAttention` and each tanh-GELU `FeedForward` a
`CompiledGeluFeedForward`: subclasses that override one method and add no state. Changing an
instance's class in place (as `torch.nn.utils.parametrize` does) keeps the module itself, its
submodules, parameters, hooks and state-dict keys, so optimizers, DDP/FSDP, checkpoints and any
reference held to the module see no difference. Only exact classes are swapped: a subclass
someone wrote keeps its own methods.
"""

from __future__ import annotations

from torch import nn

from ..attention import MultiheadAttention
from ..feed_forward import FeedForward
from .fused_qkv import FusedQkvAttention
from .gelu_tanh import CompiledGeluFeedForward, compiled_gelu_tanh


def _training_class(module: nn.Module) -> type[nn.Module] | None:
    if type(module) is MultiheadAttention:
        return FusedQkvAttention
    if type(module) is FeedForward and module.activation == "gelu_tanh":
        return CompiledGeluFeedForward
    return None


def accelerate_training(model: nn.Module, *, enabled: bool = True) -> list[str]:
    """Swaps in the CPU training paths (fused q/k/v, compiled tanh GELU) and returns the names of
    the modules swapped. Apply it to the built model before wrapping (DDP, FSDP, torch.compile) and
    before the optimizer. Idempotent; a no-op when not `enabled` or where any parameter is off the
    CPU. The swapped modules compute what they did, eval and decoding included."""
    if not enabled or any(p.device.type != "cpu" for p in model.parameters()):
        return []
    swapped = []
    for name, module in model.named_modules():
        faster = _training_class(module)
        if faster is not None:
            module.__class__ = faster
            swapped.append(name)
            if faster is CompiledGeluFeedForward:
                # built here, outside any forward: built inside an activation-checkpointed block, its probe's
                # backward would run within the checkpoint, whose recomputation then saves other tensors
                compiled_gelu_tanh()
    return swapped
