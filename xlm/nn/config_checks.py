"""The `__post_init__` checks every transformer family's config makes, worded once.

A config names its own fields; these functions only read them, so a family keeps its config a
plain dataclass and adds the checks of its own fields after these.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any


def check_at_least_one(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def check_choices(config: Any, choices: Mapping[str, Sequence[str]]) -> None:
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise ValueError(f"{name} must be one of {tuple(allowed)}, got {getattr(config, name)!r}")


def check_sampling_filters(config: Any) -> None:
    """A sampler config's `temperature`, `top_k` and `top_p`, checked whatever its strategy: a greedy default
    would otherwise keep a bad value until someone samples."""
    if config.temperature < 0:
        raise ValueError(f"sampler.temperature must be >= 0 (0 = greedy), got {config.temperature}")
    if config.top_k is not None and config.top_k < 1:
        raise ValueError(f"sampler.top_k must be >= 1 or null (no top-k filter), got {config.top_k}")
    if config.top_p is not None and not 0.0 < config.top_p <= 1.0:
        raise ValueError(f"sampler.top_p must be in (0, 1] or null (no nucleus filter), got {config.top_p}")


@functools.cache
def _field_types(cls: type) -> dict[str, tuple[type, ...]]:
    """Each field's accepted types, from its annotation: `int`, `float`, `bool`, `str`, or one of them `| None`."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        members = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        out[f.name] = tuple(type(None) if m is type(None) else m for m in members)
    return out


def _fits(value: Any, accepted: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # a bool is an int to Python, never to a config
        return bool in accepted
    if isinstance(value, int) and float in accepted:
        return True
    return any(isinstance(value, t) for t in accepted if t is not bool)


def check_value_types(cls: type, values: Mapping[str, Any], prefix: str = "") -> None:
    """`values` for dataclass `cls` hold their fields' annotated types (a float where a size goes, a string
    where a number goes): configs come from JSON files, checkpoints and the command line, and a wrong type
    would surface deep inside torch, or as a comparison between a str and a float. Fields annotated with
    other types (`list[int]`, a Literal) are left to the class. `prefix` ("sampler.") names the section."""
    types = _field_types(cls)
    for name, value in values.items():
        accepted = types.get(name, ())
        if accepted and all(isinstance(t, type) for t in accepted) and not _fits(value, accepted):
            wanted = " or ".join("None" if t is type(None) else t.__name__ for t in accepted)
            raise TypeError(f"{prefix}{name} must be {wanted}, got {value!r} ({type(value).__name__})")


def check_field_types(config: Any, prefix: str = "") -> None:
    """`check_value_types` on a dataclass instance's own fields."""
    check_value_types(type(config), {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}, prefix)


def check_transformer(config: Any) -> None:
    """The field types, and the fields all families share: sizes, heads dividing the width, RoPE base,
    norm eps, dropout."""
    check_field_types(config)
    check_at_least_one(config, "vocab_size", "model_dim", "num_layers", "num_heads", "max_seq_len")
    if config.model_dim % config.num_heads:
        raise ValueError(f"num_heads={config.num_heads} does not divide model_dim={config.model_dim}")
    if config.rope_base <= 0:
        raise ValueError(f"rope_base must be > 0, got {config.rope_base}")
    if config.norm_eps <= 0:
        raise ValueError(f"norm_eps must be > 0, got {config.norm_eps}")
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {config.dropout}")


def check_ffn_init_and_padding(config: Any) -> None:
    """`ffn_dim` (None = 4 * model_dim), `init_std`, `pad_token_id` and `padding_idx`, for the families built
    from `xlm.nn.TransformerBlock`."""
    if config.ffn_dim is not None and config.ffn_dim < 1:
        raise ValueError(f"ffn_dim must be >= 1 or None (4 * model_dim), got {config.ffn_dim}")
    if config.init_std <= 0:
        raise ValueError(f"init_std must be > 0, got {config.init_std}")
    if not 0 <= config.pad_token_id < config.vocab_size:
        raise ValueError(f"pad_token_id={config.pad_token_id} is outside the vocabulary [0, {config.vocab_size})")
    if config.padding_idx is not None and not 0 <= config.padding_idx < config.vocab_size:
        raise ValueError(f"padding_idx={config.padding_idx} is outside the vocabulary [0, {config.vocab_size}) "
                         f"(or None: no row left out of the embedding's gradient)")
