"""Building a model that metadata from a file describes, bounded by the weights that came with it.

A config.json is as untrusted as the weights beside it, and far cheaper to make absurd: `model_dim=1e9`
allocates 100 GB before any shape is compared, `num_layers=1e8` takes hours to build even on the meta
device. So the layer count is bounded by the number of tensors first, the model is then built on the
meta device (no memory) and every shape compared with the weights', and only a model that fits is
built for real.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from xlm.errors import XlmUserError

__all__ = ["ConfigBeyondWeightsError", "check_extra_elements", "meta_model", "tied_aliases"]

#: Elements a model may hold beyond its weights (non-persistent buffers, e.g. sinusoid tables), at least.
_EXTRA_ELEMENTS_FLOOR = 1 << 22


class ConfigBeyondWeightsError(XlmUserError, ValueError):
    """A config asks for more than the weights beside it hold."""


def meta_model(factory: Callable[..., nn.Module], config: Any, *, tensors: int, where: str | None) -> nn.Module:
    """`factory(config, device="meta")`, once the config's layer count is within what `tensors` weights can
    hold (every layer has at least one tensor)."""
    layers = getattr(config, "num_layers", None)
    if isinstance(layers, int) and layers > tensors:
        raise ConfigBeyondWeightsError(f"{where or 'the checkpoint'}: the config says num_layers={layers}, but the "
                                       f"weights hold only {tensors} tensors; the config does not describe these "
                                       f"weights")
    try:
        return factory(config, device="meta")
    except RuntimeError as err:  # sizes whose product overflows even on the meta device
        raise ConfigBeyondWeightsError(f"{where or 'the checkpoint'}: the config describes a model too large to "
                                       f"build ({err}); it does not describe these weights") from None


def check_extra_elements(model: nn.Module, state: Mapping[str, Tensor], *, where: str | None) -> None:
    """A meta `model` whose shapes already match `state` may still hold buffers the weights do not carry;
    refuse more of them than the weights themselves (or a few million elements)."""
    held = {id(t): t.numel() for t in [*model.parameters(), *model.buffers()]}  # a tied weight once
    in_state = sum(t.numel() for t in state.values())
    extra = sum(held.values()) - in_state
    if extra > max(in_state, _EXTRA_ELEMENTS_FLOOR):
        raise ConfigBeyondWeightsError(f"{where or 'the checkpoint'}: the config builds a model with {extra:,} "
                                       f"elements beyond the {in_state:,} its weights hold; the config does not "
                                       f"describe these weights")


def tied_aliases(model: nn.Module) -> list[str]:
    """State-dict keys whose parameter is the same object as an earlier key's (tied heads)."""
    seen: dict[int, str] = {}
    tied = []
    for key, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            tied.append(key)
        else:
            seen[id(tensor)] = key
    return tied
