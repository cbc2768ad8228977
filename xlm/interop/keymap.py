"""The key-map language of checkpoint converters: rules between two layouts with a derived
inverse, tensor transforms, and strict shape checks.

A `KeyMap` is a list of `Rule`s between two layouts. Templates are dotted keys with
placeholders: `{i}` matches one dotted component (`[^.]+`), `{name:REGEX}` matches REGEX::

    GPT2 = KeyMap([
        Rule("transformer.h.{i}.ln_1.{p}", "layers.{i}.attn_norm.{p}"),
        Rule("transformer.h.{i}.attn.c_attn.weight",               # Conv1D (in, 3*out):
             ("layers.{i}.attn.q_proj.weight", "layers.{i}.attn.k_proj.weight",
              "layers.{i}.attn.v_proj.weight"),
             Chain(Transpose(), Split(dim=0))),                     # transpose, then q | k | v
    ], drop=["transformer.h.{i}.attn.masked_bias"])
    ours = GPT2.apply(hf_state).state
    back = GPT2.inverse().apply(ours).state                     # the same table, the other way

Every rule that matches a key applies, so two source keys may feed one target (tied weights:
they must be equal, or the map refuses) and, in the inverse, one key fans out to both again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from xlm.errors import ConversionError
from xlm.model_bounds import tied_aliases

__all__ = ["Chain", "Concat", "KeyMap", "KeyMapResult", "Rule", "Split", "TensorTransform", "Transpose",
           "check_mapped", "check_state_dict"]


# -- tensor transforms -----------------------------------------------------------------------

class TensorTransform(Protocol):
    """Maps the tensors of a rule's source keys to those of its target keys, and back."""

    def __call__(self, tensors: list[Tensor]) -> list[Tensor]: ...

    def inverse(self) -> TensorTransform: ...


@dataclass(frozen=True)
class Transpose:
    """Swaps the two dims of each 2-D tensor (GPT-2's Conv1D stores Linear weights as (in, out))."""

    def __call__(self, tensors: list[Tensor]) -> list[Tensor]:
        for t in tensors:
            if t.ndim != 2:
                raise ConversionError(f"Transpose expects 2-D weights, got shape {tuple(t.shape)}")
        return [t.t() for t in tensors]

    def inverse(self) -> Transpose:
        return self


@dataclass(frozen=True)
class Split:
    """One tensor into `parts` equal pieces along `dim` (`parts` defaults to the rule's target count),
    or into `sizes` (e.g. a fused q|k|v with fewer k/v heads)."""

    dim: int = 0
    parts: int | None = None
    sizes: tuple[int, ...] | None = None

    def __call__(self, tensors: list[Tensor]) -> list[Tensor]:
        (tensor,) = tensors
        if self.sizes is not None:
            if sum(self.sizes) != tensor.shape[self.dim]:
                raise ConversionError(f"cannot split dim {self.dim} of size {tensor.shape[self.dim]} into {self.sizes}")
            return list(tensor.split(list(self.sizes), dim=self.dim))
        parts = self.parts or 1
        if tensor.shape[self.dim] % parts:
            raise ConversionError(f"cannot split dim {self.dim} of shape {tuple(tensor.shape)} "
                                  f"into {parts} equal parts")
        return list(tensor.chunk(parts, dim=self.dim))

    def inverse(self) -> Concat:
        return Concat(dim=self.dim, parts=self.parts, sizes=self.sizes)


@dataclass(frozen=True)
class Concat:
    """Several tensors into one along `dim` (the inverse of Split)."""

    dim: int = 0
    parts: int | None = None
    sizes: tuple[int, ...] | None = None

    def __call__(self, tensors: list[Tensor]) -> list[Tensor]:
        return [torch.cat(tensors, dim=self.dim)]

    def inverse(self) -> Split:
        return Split(dim=self.dim, parts=self.parts, sizes=self.sizes)


@dataclass(frozen=True)
class Chain:
    """Transforms applied left to right; the inverse runs the inverses right to left."""

    steps: tuple[TensorTransform, ...]

    def __init__(self, *steps: TensorTransform) -> None:
        object.__setattr__(self, "steps", tuple(steps))

    def __call__(self, tensors: list[Tensor]) -> list[Tensor]:
        for step in self.steps:
            tensors = step(tensors)
        return tensors

    def inverse(self) -> Chain:
        return Chain(*(step.inverse() for step in reversed(self.steps)))


# -- key templates, rules and maps -----------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{(\w+)(?::([^{}]+))?\}")


@dataclass(frozen=True)
class _Template:
    text: str  # with bare {name} placeholders
    pattern: re.Pattern[str]
    names: frozenset[str]

    @classmethod
    def parse(cls, template: str, regexes: Mapping[str, str] | None = None) -> _Template:
        """`regexes` gives the pattern of placeholders written bare here (shared within a rule)."""
        regexes = regexes or {}
        regex, names, pos = [], [], 0
        for m in _PLACEHOLDER.finditer(template):
            regex.append(re.escape(template[pos:m.start()]))
            name = m.group(1)
            if name in names:
                raise ValueError(f"placeholder {{{name}}} appears twice in key template {template!r}")
            names.append(name)
            regex.append(f"(?P<{name}>{m.group(2) or regexes.get(name, '[^.]+')})")
            pos = m.end()
        regex.append(re.escape(template[pos:]))
        text = _PLACEHOLDER.sub(lambda m: "{" + m.group(1) + "}", template)
        return cls(text, re.compile("".join(regex)), frozenset(names))

    def match(self, key: str) -> dict[str, str] | None:
        m = self.pattern.fullmatch(key)
        return None if m is None else m.groupdict()

    def format(self, values: Mapping[str, str]) -> str:
        return self.text.format(**values)


class Rule:
    """`source` key template(s) -> `target` template(s), with an optional tensor transform that maps
    the source tensors (in order) to the target tensors. Placeholders must agree on both sides so
    the rule can run backwards."""

    def __init__(self, source: str | Sequence[str], target: str | Sequence[str],
                 transform: TensorTransform | None = None) -> None:
        sources = [source] if isinstance(source, str) else list(source)
        targets = [target] if isinstance(target, str) else list(target)
        # a placeholder's pattern, given once in the rule, holds in all its templates (both directions)
        regexes = {m.group(1): m.group(2) for t in sources + targets for m in _PLACEHOLDER.finditer(t) if m.group(2)}
        self.sources = tuple(_Template.parse(s, regexes) for s in sources)
        self.targets = tuple(_Template.parse(t, regexes) for t in targets)
        if not self.sources or not self.targets:
            raise ValueError("a rule needs at least one source and one target template")
        names = {t.names for t in self.sources + self.targets}
        if len(names) != 1:
            raise ValueError(f"rule {self}: every template must use the same placeholders, got "
                             f"{[sorted(n) for n in names]}")
        if transform is None and len(self.sources) != len(self.targets):
            raise ValueError(f"rule {self}: {len(self.sources)} source(s) to {len(self.targets)} target(s) "
                             f"needs a transform (Split or Concat)")
        if isinstance(transform, Split) and transform.parts is None and transform.sizes is None:
            transform = Split(dim=transform.dim, parts=len(self.targets))
        if isinstance(transform, Chain):
            transform = Chain(*(Split(dim=s.dim, parts=len(self.targets))
                                if isinstance(s, Split) and s.parts is None and s.sizes is None else s
                                for s in transform.steps))
        self.transform = transform

    def inverse(self) -> Rule:
        rule = Rule.__new__(Rule)
        rule.sources, rule.targets = self.targets, self.sources
        rule.transform = None if self.transform is None else self.transform.inverse()
        return rule

    def __repr__(self) -> str:
        src = [t.text for t in self.sources]
        dst = [t.text for t in self.targets]
        return f"Rule({src[0] if len(src) == 1 else src!r} -> {dst[0] if len(dst) == 1 else dst!r})"


@dataclass
class KeyMapResult:
    """`state`: the mapped tensors; `unmatched`: source keys no rule or drop pattern covers;
    `dropped`: source keys deliberately left out (e.g. BERT's pooler, rotary buffers);
    `incomplete`: keys a multi-key rule matched while a sibling it needs was absent."""

    state: dict[str, Tensor]
    unmatched: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)


class KeyMap:
    """A table of rules between two layouts, applied to whole state dicts; `inverse()` runs the same
    table backwards (drop patterns do not carry over: pass the other side's own)."""

    def __init__(self, rules: Sequence[Rule], *, drop: Sequence[str] = ()) -> None:
        self.rules = list(rules)
        self.drop = [_Template.parse(d) for d in drop]

    def inverse(self, *, drop: Sequence[str] = ()) -> KeyMap:
        return KeyMap([rule.inverse() for rule in self.rules], drop=drop)

    def is_dropped(self, key: str) -> bool:
        return any(d.match(key) is not None for d in self.drop)

    def apply(self, state: Mapping[str, Tensor], *, source: str | Path | None = None) -> KeyMapResult:
        """Maps every key; conflicting writes to one target (untied copies of a tied weight) raise."""
        out: dict[str, Tensor] = {}
        origin: dict[str, str] = {}
        consumed: set[str] = set()
        incomplete: set[str] = set()
        for key in state:  # key-major: the output keeps the source's order
            for rule in self.rules:
                values = rule.sources[0].match(key)
                if values is None:
                    continue
                keys = [t.format(values) for t in rule.sources]
                absent = [k for k in keys if k not in state]
                if absent:
                    incomplete.update(k for k in keys if k in state)
                    continue
                tensors = [state[k] for k in keys]
                results = rule.transform(tensors) if rule.transform is not None else tensors
                targets = [t.format(values) for t in rule.targets]
                if len(results) != len(targets):
                    raise ConversionError(f"{rule} produced {len(results)} tensors for {len(targets)} keys",
                                          source=source)
                for target, tensor in zip(targets, results):
                    if target in out and not (out[target].shape == tensor.shape and torch.equal(out[target], tensor)):
                        raise ConversionError(
                            f"{origin[target]} and {key} both map to {target} (tied weights) but differ; the "
                            f"checkpoint is inconsistent", source=source)
                    out[target] = tensor
                    origin.setdefault(target, key)
                consumed.update(keys)
        dropped = [k for k in state if k not in consumed and self.is_dropped(k)]
        unmatched = [k for k in state if k not in consumed and k not in dropped]
        return KeyMapResult(out, unmatched=[k for k in unmatched if k not in incomplete], dropped=dropped,
                            incomplete=sorted(incomplete - consumed))


def check_state_dict(state: Mapping[str, Tensor], expected: Mapping[str, Tensor] | torch.nn.Module, *,
                     source: str | Path | None = None, optional: Iterable[str] = (),
                     target: str = "the model") -> None:
    """Raises one ConversionError naming every missing, unexpected and wrong-shape key.
    `expected` is a model (its tied aliases may be absent) or a reference state dict (shapes only)."""
    optional = set(optional)
    if isinstance(expected, torch.nn.Module):
        optional |= set(tied_aliases(expected))
        expected = expected.state_dict()
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    shapes = [(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in state
              if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        raise ConversionError(f"the state dict does not fit {target}", missing=missing, unexpected=unexpected,
                              wrong_shapes=shapes, source=source, target=target)


def check_mapped(result: KeyMapResult, expected: Mapping[str, Tensor] | torch.nn.Module, *,
                 source: str | Path | None = None, optional: Iterable[str] = (), target: str = "the model") -> None:
    """After `KeyMap.apply`: source keys no rule took (named as in the checkpoint), target keys nothing
    produced, and wrong shapes, all in one ConversionError."""
    optional = set(optional)
    if isinstance(expected, torch.nn.Module):
        optional |= set(tied_aliases(expected))
        expected = expected.state_dict()
    state = result.state
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [*result.unmatched, *result.incomplete, *(k for k in state if k not in expected)]
    shapes = [(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in state
              if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        raise ConversionError(f"the checkpoint does not fit {target}", missing=missing, unexpected=unexpected,
                              wrong_shapes=shapes, source=source, target=target)
