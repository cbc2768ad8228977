"""Architecture registries (fairseq2 style), the registry of model families and that of tasks.

An arch is a named function returning a fresh config; a family binds a config class,
its archs, a factory, checkpoint converters and the unit the recipes drive; a task binds
its config class and the builder that turns such a config into the task.

The registries fill themselves on demand, so importing this module costs nothing: the core
families (`xlm.models`) and tasks (`xlm.data.tasks`) are imported by the first lookup, and
external families (which may register tasks too) are discovered (`xlm.plugins`) by the first
lookup that misses among them (which needs a plugin: a broken declaration is an error) or that
lists them all (which does not: it is a warning).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
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
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "."
    listing = ", ".join(sorted(known)) if known else "(none registered)"
    plural = kind[:-1] + "ies" if kind.endswith("y") and not kind.endswith(("ay", "ey", "oy")) else kind + "s"
    return f"unknown {kind} {name!r}{hint} Known {plural}: {listing}"


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
    `xlm.interop.converter.Converter` is the implementation the core families use; its `hf_model_types`,
    `recognises` and `needs_config` are what format detection (`xlm.interop.detect`) asks."""

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


class Discover(Protocol):
    """Finds external families; `needed` when a lookup missed (a plugin may hold the name), not for a listing."""

    def __call__(self, *, needed: bool) -> object: ...


class _OnDemand:
    """A registry that fills itself: `load_core` runs before the first lookup or registration;
    `discover` before each listing and on each lookup that misses (it does its work once)."""

    def __init__(self, *, load_core: Callable[[], object] | None = None, discover: Discover | None = None) -> None:
        self._load_core = load_core
        self._discover = discover

    def _ensure_core(self) -> None:
        load, self._load_core = self._load_core, None  # cleared first: the core families register here
        if load is None:
            return
        try:
            load()
        except BaseException:
            self._load_core = load
            raise

    def _ensure_discovered(self, *, needed: bool) -> None:
        self._ensure_core()
        if self._discover is not None:
            self._discover(needed=needed)


class FamilyRegistry(_OnDemand):
    """Families by name, filled on demand (`_OnDemand`)."""

    def __init__(self, *, load_core: Callable[[], object] | None = None, discover: Discover | None = None) -> None:
        super().__init__(load_core=load_core, discover=discover)
        self._families: dict[str, Family] = {}

    def register(self, family: Family) -> None:
        self._ensure_core()  # so a family clashing with a core one is refused here, not when the core loads
        if family.name in self._families:
            other = self._families[family.name]
            raise DuplicateNameError(
                f"model family {family.name!r} is registered twice (from {other.source} and {family.source})"
            )
        for arch in family.archs.names():
            owner = self._owner_of(arch)
            if owner is not None:
                raise DuplicateNameError(f"arch {arch!r} of family {family.name!r} is already defined by {owner!r}")
        self._families[family.name] = family

    def get(self, name: str) -> Family:
        self._ensure_core()
        if name not in self._families:
            self._ensure_discovered(needed=True)
        try:
            return self._families[name]
        except KeyError:
            raise UnknownNameError(unknown_name_message("family", name, self.names())) from None

    def names(self) -> list[str]:
        self._ensure_discovered(needed=False)
        return sorted(self._families)

    def _owner_of(self, arch: str) -> str | None:
        return next((family.name for family in self._families.values() if arch in family.archs), None)

    def family_of_arch(self, arch: str) -> str | None:
        self._ensure_core()
        if self._owner_of(arch) is None:
            self._ensure_discovered(needed=True)
        return self._owner_of(arch)

    def get_by_arch(self, arch: str) -> Family:
        owner = self.family_of_arch(arch)
        if owner is None:
            raise UnknownNameError(unknown_name_message("arch", arch, list(self.list_archs())))
        return self._families[owner]

    def list_archs(self) -> dict[str, str]:
        """arch name -> family name, over every registered family."""
        self._ensure_discovered(needed=False)
        return {arch: f.name for f in self._families.values() for arch in f.archs.names()}


def _import_core_families() -> None:
    importlib.import_module("xlm.models")  # each family's package registers it


def _discover_external_families(*, needed: bool) -> None:
    from xlm.plugins.discovery import load_external_models_once  # imported here: discovery imports this module

    load_external_models_once(needed=needed)


families = FamilyRegistry(load_core=_import_core_families, discover=_discover_external_families)
_default_source: list[str] = []


@contextlib.contextmanager
def registering_from(source: str) -> Iterator[None]:
    """Families and tasks registered inside this block without a `source` of their own get this one
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


def list_archs() -> dict[str, str]:
    """Every registered arch name -> its family."""
    return families.list_archs()


def create_model(arch: str, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 **config_overrides: Any) -> torch.nn.Module:
    """A freshly initialised model of a registered arch, e.g. create_model("arlm_tiny", vocab_size=100)."""
    from xlm.placement import as_device, as_dtype  # torch, which `import xlm` does not import

    family = families.get_by_arch(arch)
    config = family.archs.get(arch)
    for key, value in config_overrides.items():
        if not hasattr(config, key):
            fields = [f.name for f in dataclasses.fields(config)] if dataclasses.is_dataclass(config) else []
            close = difflib.get_close_matches(key, fields, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "."
            raise TypeError(f"{type(config).__name__} (arch {arch!r}) has no field {key!r}{hint}")
        setattr(config, key, value)
    if hasattr(config, "__post_init__"):
        config.__post_init__()
    return family.factory(config, device=None if device is None else as_device(device),
                          dtype=None if dtype is None else as_dtype(dtype))


class TaskBuilder(Protocol):
    """Builds a task (`xlm.data.task.Task`) from its config (an instance of the registered config class)."""

    def __call__(self, config: Any) -> Any: ...


@dataclass(frozen=True, kw_only=True)
class RegisteredTask:
    """A task name bound to its config dataclass (which the recipe's `task` node is typed by) and builder."""

    name: str
    config_class: type
    builder: TaskBuilder
    description: str = ""
    source: str = "core"


class TaskRegistry(_OnDemand):
    """Tasks by name, filled on demand (`_OnDemand`)."""

    def __init__(self, *, load_core: Callable[[], object] | None = None, discover: Discover | None = None) -> None:
        super().__init__(load_core=load_core, discover=discover)
        self._tasks: dict[str, RegisteredTask] = {}

    def register(self, task: RegisteredTask) -> None:
        self._ensure_core()
        if task.name in self._tasks:
            other = self._tasks[task.name]
            raise DuplicateNameError(f"task {task.name!r} is registered twice (from {other.source} and {task.source})")
        if not dataclasses.is_dataclass(task.config_class) or "name" not in {
                f.name for f in dataclasses.fields(task.config_class)}:
            raise TypeError(f"task {task.name!r}: config_class must be a dataclass with a `name` field (subclass "
                            f"xlm.data.task.TaskConfig), got {task.config_class!r}")
        self._tasks[task.name] = task

    def get(self, name: str) -> RegisteredTask:
        self._ensure_core()
        if name not in self._tasks:
            self._ensure_discovered(needed=True)
        try:
            return self._tasks[name]
        except KeyError:
            raise UnknownNameError(unknown_name_message("task", name, self.names())) from None

    def names(self) -> list[str]:
        self._ensure_discovered(needed=False)
        return sorted(self._tasks)

    def __contains__(self, name: object) -> bool:
        self._ensure_core()
        if name not in self._tasks:
            self._ensure_discovered(needed=True)
        return name in self._tasks


def _import_core_tasks() -> None:
    importlib.import_module("xlm.data.tasks")  # registers the star, sort and text tasks


tasks = TaskRegistry(load_core=_import_core_tasks, discover=_discover_external_families)


def register_task(name: str, *, config_class: type, builder: TaskBuilder, description: str = "") -> None:
    """Make `--task NAME` train on the task `builder(config)` builds, `task.KEY=VALUE` setting the fields of
    `config_class` (a subclass of `xlm.data.task.TaskConfig`). An external family's package may call it."""
    source = _default_source[-1] if _default_source else "core"
    tasks.register(RegisteredTask(name=name, config_class=config_class, builder=builder, description=description,
                                  source=source))


def get_task(name: str) -> RegisteredTask:
    return tasks.get(name)


def list_tasks() -> list[str]:
    """Every registered task name, the core tasks and those of external families."""
    return tasks.names()
