"""q, k and v as one matmul over their concatenated weights, while training.

Under autograd the three projections of one input each add a GEMM to the input's gradient; over
the concatenated weights that gradient comes out of one GEMM instead of three summed. Without
autograd the concatenation is pure cost, paid on every call, and three GEMMs run about as fast
as one, so inference calls the projections as they are (decoding has its own one-matmul path,
laid out once per `generate`, in `xlm.nn.cpu.prepacked`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from ..attention import MultiheadAttention


def plain_linear(module: nn.Module) -> bool:
    """An nn.Linear whose forward is F.linear of its own weight and bias: not a subclass (LoRA-style
    wrappers), no forward set on the instance, no hook on it or on every module. torch has no public
    way to ask for a module's hooks; these are the dicts `nn.Module.__call__` reads."""
    hooks = nn.modules.module
    return (type(module) is nn.Linear and "forward" not in module.__dict__
            and not (module._forward_hooks or module._forward_pre_hooks
                     or module._backward_hooks or module._backward_pre_hooks)
            and not (hooks._global_forward_hooks or hooks._global_forward_pre_hooks
                     or hooks._global_backward_hooks or hooks._global_backward_pre_hooks))


def qkv_weight_and_bias(attn: MultiheadAttention) -> tuple[Tensor, Tensor | None]:
    """q, k and v's weights (and biases) stacked along the output dimension, for one matmul."""
    projections = attn.q_proj, attn.k_proj, attn.v_proj
    weight = torch.cat([p.weight for p in projections])
    bias = None if attn.q_proj.bias is None else torch.cat([p.bias for p in projections])
    return weight, bias


class FusedQkvAttention(MultiheadAttention):
    """MultiheadAttention whose q/k/v run as one matmul where a gradient is wanted and all three are
    plain `nn.Linear`s; hooked or wrapped projections are called as they are. Made from a built
    MultiheadAttention by `xlm.nn.cpu.accelerate_training`, never constructed."""

    def project_qkv(self, x: Float[Tensor, "batch seq dim"]) -> tuple[Tensor, Tensor, Tensor]:
        projections = self.q_proj, self.k_proj, self.v_proj
        if not torch.is_grad_enabled() or not all(plain_linear(p) for p in projections):
            return super().project_qkv(x)
        q, k, v = F.linear(x, *qkv_weight_and_bias(self)).split([p.out_features for p in projections], dim=-1)
        return q, k, v
