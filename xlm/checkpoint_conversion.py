"""Shared machinery for checkpoint converters: key maps with a derived inverse, tensor transforms,
strict shape checks, and safe readers for safetensors, pickled and Lightning checkpoints.

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

Every family's `loader.py` builds its converters from these parts; `Converter` bundles the
two directions with a reader, so `converter(path)` gives `(config, state)` for `load_model`.
"""

from __future__ import annotations

import json
import pickle
import re
import typing
import zipfile
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

__all__ = [
    "Chain", "CheckpointReadError", "Concat", "ConversionError", "Converted", "Converter", "KeyMap",
    "KeyMapResult", "Rule", "Split", "TensorTransform", "Transpose", "check_mapped", "check_state_dict", "config_dict",
    "read_checkpoint", "read_hf_dir", "read_state_dict", "require", "tied_aliases", "to_plain",
]


# -- errors ------------------------------------------------------------------------------------

def _listing(keys: Sequence[str], limit: int = 40) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


class ConversionError(ValueError):
    """A state dict that does not fit its target: missing, unexpected and wrong-shape keys are
    listed together in one message, with the file they came from when known."""

    def __init__(self, message: str | None = None, *, missing: Iterable[str] = (), unexpected: Iterable[str] = (),
                 wrong_shapes: Iterable[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
                 source: str | Path | None = None, target: str = "the model") -> None:
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.wrong_shapes = sorted(wrong_shapes)
        self.source = None if source is None else str(source)
        parts = []
        if message:
            parts.append(message)
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s): {_listing(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s): {_listing(self.unexpected)}")
        if self.wrong_shapes:
            shapes = [f"{k} (checkpoint {tuple(got)}, {target} {tuple(want)})" for k, got, want in self.wrong_shapes]
            parts.append(f"{len(shapes)} wrong shape(s): {_listing(shapes, 20)}")
        where = f"{self.source}: " if self.source else ""
        super().__init__(where + ("; ".join(parts) if parts else "conversion failed"))


class CheckpointReadError(ValueError):
    """A checkpoint file that cannot be parsed; the message names the file and its apparent format."""


def require(config: Mapping[str, Any], names: Sequence[str], *, where: str) -> None:
    """Sizes come from the checkpoint's own config, never from class defaults: a missing one is an error."""
    missing = [n for n in names if config.get(n) is None]
    if missing:
        raise ConversionError(f"the config has no {', '.join(repr(n) for n in missing)}; the converter reads every "
                              f"size from the checkpoint's config.json rather than guessing", source=where)


def config_dict(config: Any) -> dict[str, Any]:
    """A plain dict from a config.json mapping or a transformers `PretrainedConfig`."""
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    raise TypeError(f"expected a config mapping (config.json) or a transformers config, got {type(config).__name__}")


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


def tied_aliases(model: torch.nn.Module) -> list[str]:
    """State-dict keys whose parameter is the same object as an earlier key's (tied heads)."""
    seen: dict[int, str] = {}
    tied = []
    for key, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            tied.append(key)
        else:
            seen[id(tensor)] = key
    return tied


# -- conversion results and converters -------------------------------------------------------

@dataclass
class Converted:
    """A converted checkpoint: `config` (ours, or the target layout's config.json dict), `state`,
    and what was left out. Unpacks as `config, state = converted`."""

    config: Any
    state: dict[str, Tensor]
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source: str | None = None

    def __iter__(self) -> Iterator[Any]:
        yield self.config
        yield self.state

    def summary(self) -> str:
        lines = [f"{len(self.state)} tensors"]
        if self.dropped:
            lines.append(f"dropped {len(self.dropped)} key(s): {_listing(self.dropped)}")
        lines.extend(self.notes)
        return "; ".join(lines)


class ToXlm(Protocol):
    def __call__(self, state: Mapping[str, Tensor], source_config: Any, *, source: str | None = None) -> Converted: ...


FromXlm = Callable[[Mapping[str, Tensor], Any], Converted]


@dataclass(frozen=True)
class Converter:
    """One foreign checkpoint layout of one family, both ways.

    `to_xlm(state, source_config)` -> Converted(our config, our state);
    `from_xlm(our_state, our_config)` -> Converted(the layout's config.json dict, its state);
    `export_problems(our_config)` -> why `from_xlm` cannot represent this config ([] = it can);
    `read(path)` -> (source config, source state) from a model dir or a checkpoint file.
    Calling the converter on a path reads and converts: `config, state = converter(path)`.
    `hf=True` marks layouts that transformers' Auto classes load (used by `export(format="hf")`)."""

    name: str
    description: str
    to_xlm: ToXlm
    from_xlm: FromXlm | None = None
    export_problems: Callable[[Any], list[str]] | None = None
    read: Callable[[Path], tuple[dict[str, Any], dict[str, Tensor]]] | None = None
    hf: bool = False

    def __call__(self, path: str | Path) -> Converted:
        path = Path(path)
        source_config, state = (self.read or read_hf_dir)(path)
        return self.to_xlm(state, source_config, source=str(path))


# -- reading checkpoints ---------------------------------------------------------------------

class _Opaque:
    """Stands in for a class a pickled checkpoint names but that is not on torch's weights-only
    allowlist (omegaconf configs, Lightning callbacks, ...). It is never the real class: nothing
    from the file runs; its arguments and state are only kept, for `to_plain` to read."""

    fqn = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> _Opaque:
        self = object.__new__(cls)
        self.args, self.state = args, None
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE calls the class with its args
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<opaque {self.fqn}>"


def _stand_in(fqn: str) -> type:
    return type(f"Opaque[{fqn}]", (_Opaque,), {"fqn": fqn})


# harmless builtins that configs pickle by reference (type annotations, defaultdict factories)
_HARMLESS_GLOBALS: list[Any] = [dict, list, tuple, set, frozenset, int, float, str, bool, bytes, complex,
                                type(None), slice, defaultdict, OrderedDict, typing.Any]
_MAX_RETRIES = 64


def _apparent_format(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(16)
    if zipfile.is_zipfile(path):
        return "a torch.save zip archive"
    if head[:1] == b"\x80":
        return "a legacy pickle (torch.save before 1.6, or plain pickle)"
    if len(head) >= 8 and head[8:9] == b"{":
        return "a safetensors file"
    if not head:
        return "an empty file"
    return f"an unknown format (first bytes {head[:8]!r})"


def _load_pickled(path: Path) -> Any:
    """torch.load(weights_only=True); globals outside torch's allowlist are replaced by inert stand-ins
    (dict-like ones by plain dicts), so Lightning checkpoints with omegaconf configs still open safely."""
    substitutes: dict[str, Any] = {}
    last_error: Exception | None = None
    for _ in range(_MAX_RETRIES):
        allow = _HARMLESS_GLOBALS + [(obj, fqn) for fqn, obj in substitutes.items()]
        try:
            with torch.serialization.safe_globals(allow):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except pickle.UnpicklingError as err:
            last_error = err
            message = str(err)
            unknown = re.search(r"GLOBAL (\S+) was not an allowed global", message)
            container = re.search(r"Can only (SETITEMS?|append to lists|extend lists)"
                                  r".*got <class '[^']*Opaque\[([^\]]+)\]'>", message)
            if unknown:
                fqn = unknown.group(1)
                fqn = fqn if "." in fqn else f"builtins.{fqn}"
                if fqn in substitutes:
                    break
                substitutes[fqn] = _stand_in(fqn)
            elif container:
                fqn = container.group(2)
                replacement = dict if container.group(1).startswith("SETITEM") else list
                if substitutes.get(fqn) is replacement:
                    break
                substitutes[fqn] = replacement
            else:
                break
        except (RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError) as err:
            last_error = err
            break
    raise CheckpointReadError(f"{path} could not be read as a checkpoint: it looks like {_apparent_format(path)} "
                              f"and loading it with torch.load(weights_only=True) failed "
                              f"({type(last_error).__name__}: {str(last_error).splitlines()[0] if last_error else ''})")


def read_checkpoint(path: str | Path) -> Any:
    """A checkpoint file's content: a `.safetensors` file gives its tensors; anything else is read with
    torch.load(weights_only=True) (see `_load_pickled`). Use `to_plain` on configs inside."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors" or _apparent_format(path) == "a safetensors file":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as err:
            raise CheckpointReadError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err}); "
                                      f"it may be truncated") from None
    return _load_pickled(path)


def to_plain(obj: Any, *, resolve: bool = False) -> Any:
    """Plain Python from a config unpickled with stand-ins: omegaconf DictConfig/ListConfig/nodes become
    dicts, lists and values; other stand-ins stay opaque. With `resolve`, strings that are exactly one
    absolute interpolation (`${model.hidden_size}`) take the value they point to within `obj`."""
    plain = _plain(obj)
    return _resolve(plain, plain, depth=0) if resolve else plain


def _plain(obj: Any) -> Any:
    if isinstance(obj, _Opaque):
        state = obj.state if isinstance(obj.state, dict) else {}
        if obj.fqn.endswith("DictConfig"):
            content = state.get("_content")
            return None if content is None else {k: _plain(v) for k, v in content.items()}
        if obj.fqn.endswith("ListConfig"):
            content = state.get("_content")
            return None if content is None else [_plain(v) for v in content]
        if obj.fqn.startswith("omegaconf.nodes."):
            return _plain(state.get("_val"))
        return obj
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    return obj


_INTERPOLATION = re.compile(r"\$\{([\w.]+)\}")


def _resolve(obj: Any, root: Any, depth: int) -> Any:
    if isinstance(obj, str) and depth < 16 and (m := _INTERPOLATION.fullmatch(obj)):
        node = root
        for part in m.group(1).split("."):
            if not isinstance(node, Mapping) or part not in node:
                return obj
            node = node[part]
        return _resolve(node, root, depth + 1)
    if isinstance(obj, Mapping):
        return {k: _resolve(v, root, depth) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v, root, depth) for v in obj]
    return obj


def _tensors_only(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # Lightning
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointReadError(f"{path} holds no state dict (a mapping of names to tensors, or a Lightning "
                                  f"checkpoint with one under 'state_dict')")
    return dict(obj)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a weights file: safetensors, a pickled state dict, or a Lightning `.ckpt`'s
    `state_dict`; a sharded HF index (`*.index.json`) gives all its shards."""
    path = Path(path)
    if path.name.endswith(".index.json"):
        index = json.loads(path.read_text())
        state: dict[str, Tensor] = {}
        for shard in sorted(set(index.get("weight_map", {}).values())):
            state.update(read_state_dict(path.parent / shard))
        return state
    return _tensors_only(read_checkpoint(path), path)


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def read_hf_dir(path: str | Path, *, model_type: str | None = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config.json, state dict) of an HF-style model dir, or of a weights file with a config.json beside it;
    `model_type`, when given, must be what config.json says (or config.json says none)."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"no config.json in {directory}: converters read the model's sizes from it", source=path)
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{config_file} is not valid JSON ({err})") from None
    if model_type is not None and config.get("model_type") not in (None, model_type):
        raise ConversionError(f"config.json has model_type {config.get('model_type')!r}, not {model_type!r}",
                              source=directory)
    if path.is_dir():
        weights = next((directory / name for name in _WEIGHT_FILES if (directory / name).is_file()), None)
        if weights is None:
            raise ConversionError(f"{directory} has no weights file (looked for {', '.join(_WEIGHT_FILES)})")
    else:
        weights = path
    return config, read_state_dict(weights)
