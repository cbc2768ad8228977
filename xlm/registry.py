"""Architecture registries (fairseq2 style) and the registry of model families.

An arch is a named function returning a fresh config; a family binds a config class,
its archs, a factory, checkpoint converters and the unit the recipes drive.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import torch

from xlm.errors import XlmUserError

ConfigT = TypeVar("ConfigT")


class UnknownNameError(XlmUserError, KeyError):
    """A name (arch, family, task, ...) that is not registered; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DuplicateNameError(XlmUserError, ValueError):
    """A name registered twice."""


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    """'unknown arch 'x'; did you mean ...? Known: ...' — shared by every registry."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    listing = ", ".join(sorted(known)) if known else "(none registered)"
    return f"unknown {kind} {name!r}{hint} Known {kind}s: {listing}"


class ArchRegistry(Generic[ConfigT]):
    """Named config constructors for one family; `get` returns a fresh config each call."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._factories: dict[str, Callable[[], ConfigT]] = {}

    def register(self, name: str, factory: Callable[[], ConfigT]) -> None:
        if name in self._factories:
            raise DuplicateNameError(f"arch {name!r} is already registered in family {self.family!r}")
        self._factories[name] = factory

    def decorator(self, name: str) -> Callable[[Callable[[], ConfigT]], Callable[[], ConfigT]]:
        """`@my_arch("my_model_base")` over a function returning the config."""

        def register(factory: Callable[[], ConfigT]) -> Callable[[], ConfigT]:
            self.register(name, factory)
            return factory

        return register

    def get(self, name: str) -> ConfigT:
        try:
            factory = self._factories[name]
        except KeyError:
            raise UnknownNameError(unknown_name_message("arch", name, self.names())) from None
        return factory()

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories


class ModelFactory(Protocol):
    def __call__(self, config: Any, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> torch.nn.Module: ...


class UnitFactory(Protocol):
    """Builds the family's unit (collators + loss + predictor) around a model."""

    def __call__(self, model: torch.nn.Module, tokenizer: Any, sampler: Any) -> Any: ...


class CheckpointConverter(Protocol):
    """Reads one foreign checkpoint layout: `config, state = converter(path)` (an HF model dir, a reference
    dir or a checkpoint file) gives the family's config and a state dict in its layout.
    `xlm.interop.converter.Converter` is the implementation the core families use."""

    def __call__(self, path: Any) -> Any: ...


@dataclass(frozen=True, kw_only=True)
class Family:
    """Everything the recipes and loaders need to know about one model family."""

    name: str
    config_class: type
    archs: ArchRegistry[Any]
    factory: ModelFactory
    unit_factory: UnitFactory
    sampler_config_class: type
    converters: Mapping[str, CheckpointConverter] = field(default_factory=dict)
    source: str = "core"


class FamilyRegistry:
    def __init__(self) -> None:
        self._families: dict[str, Family] = {}

    def register(self, family: Family) -> None:
        if family.name in self._families:
            other = self._families[family.name]
            raise DuplicateNameError(
                f"model family {family.name!r} is registered twice (from {other.source} and {family.source})"
            )
        for arch in family.archs.names():
            owner = self.family_of_arch(arch)
            if owner is not None:
                raise DuplicateNameError(f"arch {arch!r} of family {family.name!r} is already defined by {owner!r}")
        self._families[family.name] = family

    def get(self, name: str) -> Family:
        try:
            return self._families[name]
        except KeyError:
            raise UnknownNameError(unknown_name_message("family", name, self.names())) from None

    def names(self) -> list[str]:
        return sorted(self._families)

    def family_of_arch(self, arch: str) -> str | None:
        for family in self._families.values():
            if arch in family.archs:
                return family.name
        return None

    def get_by_arch(self, arch: str) -> Family:
        owner = self.family_of_arch(arch)
        if owner is None:
            raise UnknownNameError(unknown_name_message("arch", arch, list(self.list_archs())))
        return self._families[owner]

    def list_archs(self) -> dict[str, str]:
        """arch name -> family name, over every registered family."""
        return {arch: f.name for f in self._families.values() for arch in f.archs.names()}


families = FamilyRegistry()
_default_source: list[str] = []


@contextlib.contextmanager
def registering_from(source: str) -> Iterator[None]:
    """Families registered inside this block without a `source` of their own get this one
    (plugin discovery says where an external family came from)."""
    _default_source.append(source)
    try:
        yield
    finally:
        _default_source.pop()


def register_family(family: Family) -> None:
    if _default_source and family.source == "core":
        family = dataclasses.replace(family, source=_default_source[-1])
    families.register(family)


def get_family(name: str) -> Family:
    return families.get(name)


def list_families() -> list[str]:
    return families.names()
