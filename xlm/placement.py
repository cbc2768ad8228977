"""Where a model goes and in what precision, checked before any weights are read: a device this
machine lacks, or a dtype written as a string, would otherwise fail inside safetensors or torch with
a message about the file ("unreadable ... may be truncated") or a device string."""

from __future__ import annotations

import torch

from xlm.errors import InvalidValueError

#: dtype names a user may write, as torch and HF (`torch_dtype="bfloat16"`) spell them.
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16, "half": torch.float16}


def _device_count(kind: str) -> int | None:
    """How many `kind` devices this machine has; None where torch gives no way to ask."""
    if kind == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "mps":
        return 1 if torch.backends.mps.is_available() else 0
    backend = getattr(torch, kind, None)
    if backend is not None and hasattr(backend, "is_available") and hasattr(backend, "device_count"):
        return backend.device_count() if backend.is_available() else 0
    return None


def as_device(value: torch.device | str, *, option: str = "device", auto: bool = False) -> torch.device:
    """`value` as a device this machine has; `option` names the setting in the error, `auto` says whether
    it also takes 'auto' (resolved by the caller)."""
    also, fallback = ("'auto', ", "'cpu' or 'auto'") if auto else ("", "'cpu'")
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise InvalidValueError(f"{option}={value!r} is not a device; use {also}'cpu', 'cuda' or 'cuda:N'") from None
    if device.type in ("cpu", "meta"):
        return device
    count = _device_count(device.type)
    if count == 0:
        raise InvalidValueError(f"{option}={value!r} but {device.type.upper()} is not available here; use {fallback}")
    if count is not None and device.index is not None and device.index >= count:
        raise InvalidValueError(f"{option}={value!r} but this machine has {count} {device.type} device(s); use "
                                f"{device.type}:0 to {device.type}:{count - 1}")
    return device


def as_dtype(value: torch.dtype | str, *, option: str = "dtype") -> torch.dtype:
    """`value` as a floating-point torch dtype: a torch.dtype, or one of the names in DTYPES."""
    if isinstance(value, torch.dtype):
        if not value.is_floating_point:
            raise InvalidValueError(f"{option}={value} is not a floating-point dtype; use torch.float32, "
                                    f"torch.bfloat16 or torch.float16")
        return value
    name = str(value).removeprefix("torch.")
    if name not in DTYPES:
        raise InvalidValueError(f"{option}={value!r} is not a floating-point dtype name; use a torch.dtype or one "
                                f"of {sorted(DTYPES)}")
    return DTYPES[name]
