"""External model families: found by directory files or installed packages, validated, imported.

Routes, in order:

* ``xlm_models.json`` (``{"name": "relative/path"}``, paths relative to the file) and the
  legacy ``.xlm_models`` (one name per line, ``#`` comments, the path is the name) in the
  current directory, in ``./xlm-models/`` and in each directory of ``$XLM_MODELS_PATH``;
* installed packages named in ``$XLM_MODELS_PACKAGES`` (colon-separated), and packages that
  declare an ``xlm.models`` entry point.

A model's root holds its Python package (``root/<name>/``, or the one package there) and its
``configs/``. Its root goes on ``sys.path`` (the root, never the current directory), the
package is imported and registers its family with ``xlm.register_family``; its ``configs/``
joins the Hydra search path and its ``assets/cards/`` the card store.

Discovery runs on demand, never at ``import xlm``: the first family-registry lookup that misses
among the core families or lists them all, the card store and the Hydra search path each call
:func:`load_external_models_once`. :func:`load_external_models` scans again, e.g. after a chdir.

Problems raise :class:`ExternalModelError` subclasses (strict, the default) or become warnings
with ``strict=False`` / ``XLM_MODELS_STRICT=0``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from xlm.errors import XlmUserError
from xlm.registry import families, registering_from

CORE_FAMILIES = ("arlm", "mlm", "ilm", "mdlm")
REQUIRED_MODULES = ("model", "loss", "predictor", "collators")
MODELS_FILE = "xlm_models.json"
LEGACY_MODELS_FILE = ".xlm_models"
ENTRY_POINT_GROUP = "xlm.models"


class ExternalModelError(XlmUserError):
    """Base of every plugin discovery error."""


class ExternalModelConflictError(ExternalModelError):
    """Two models share a name or a package, or a model takes a core family's name."""


class ExternalModelNotFoundError(ExternalModelError):
    """A declared model is not where its declaration says."""


class ExternalModelValidationError(ExternalModelError):
    """A model lacks a required part."""


class ExternalModelImportError(ExternalModelError):
    """A model's package failed to import (the original error is attached as __cause__)."""


class ExternalModelWarning(UserWarning):
    """A discovery problem reported without stopping (non-strict mode)."""


@dataclass(frozen=True)
class DeclaredModel:
    name: str
    root: Path | None  # directory route: the model's root dir; package route: None until found
    declared_in: str  # the file or setting that named it
    package: str | None = None  # package route: the importable package name


@dataclass(frozen=True)
class LoadedModel:
    name: str
    package: str
    package_dir: Path
    configs: Path
    declared_in: str


_loaded: dict[str, LoadedModel] = {}
_scanned = False  # whether load_external_models has run in this process


def search_dirs() -> list[Path]:
    cwd = Path.cwd()
    env = [Path(p) for p in os.environ.get("XLM_MODELS_PATH", "").split(":") if p]
    return [cwd, cwd / "xlm-models", *env]


def _read_models_file(path: Path) -> list[DeclaredModel]:
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ExternalModelValidationError(f"{path} is not valid JSON ({err}); it maps model names to paths, "
                                           f'e.g. {{"my_model": "my_model"}}') from None
    if not isinstance(entries, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in entries.items()):
        raise ExternalModelValidationError(
            f'{path} must map model names to relative paths, e.g. {{"my_model": "my_model"}}')
    return [DeclaredModel(name, (path.parent / rel).resolve(), str(path)) for name, rel in entries.items()]


def _read_legacy_file(path: Path) -> list[DeclaredModel]:
    names = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [DeclaredModel(name, (path.parent / name).resolve(), str(path)) for name in names if name]


def declared_models() -> list[DeclaredModel]:
    out: list[DeclaredModel] = []
    seen_files: set[Path] = set()
    for directory in search_dirs():
        for file, reader in ((directory / MODELS_FILE, _read_models_file), (directory / LEGACY_MODELS_FILE,
                                                                             _read_legacy_file)):
            if file.is_file() and file.resolve() not in seen_files:
                seen_files.add(file.resolve())
                out += reader(file)
    for package in (p for p in os.environ.get("XLM_MODELS_PACKAGES", "").split(":") if p):
        out.append(DeclaredModel(package, None, "$XLM_MODELS_PACKAGES", package))
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        out.append(DeclaredModel(entry.name, None, f"the {ENTRY_POINT_GROUP!r} entry point of {entry.value}",
                                 entry.value.split(":")[0]))
    return out


def _package_of(model: DeclaredModel) -> tuple[str, Path, Path]:
    """(package name, package dir, configs dir), checked to exist."""
    if model.root is None:  # an installed package
        assert model.package is not None
        spec = importlib.util.find_spec(model.package)
        if spec is None or not spec.submodule_search_locations:
            raise ExternalModelNotFoundError(f"model {model.name!r} (from {model.declared_in}): no installed package "
                                             f"{model.package!r}; `pip install` it, or fix the name")
        package_dir = Path(list(spec.submodule_search_locations)[0])
        configs = next((c for c in (package_dir / "configs", package_dir.parent / "configs") if c.is_dir()),
                       package_dir / "configs")
        return model.package, package_dir, configs
    if not model.root.is_dir():
        searched = ", ".join(map(str, search_dirs()))
        raise ExternalModelNotFoundError(f"model {model.name!r} declared in {model.declared_in} not found: "
                                         f"{model.root} is not a directory (searched {searched})")
    candidates = [model.root / model.name] if (model.root / model.name).is_dir() else [
        d for d in model.root.iterdir() if (d / "__init__.py").is_file()]
    if len(candidates) != 1:
        raise ExternalModelValidationError(f"model {model.name!r} ({model.root}): expected its Python package at "
                                           f"{model.root / model.name}/ (a directory with __init__.py)")
    return candidates[0].name, candidates[0], model.root / "configs"


def _validate(model: DeclaredModel, package_dir: Path, configs: Path) -> None:
    missing = [] if (package_dir / "__init__.py").is_file() else ["__init__.py"]
    missing += [f"{m}.py" for m in REQUIRED_MODULES if not (package_dir / f"{m}.py").is_file()]
    if not configs.is_dir():
        missing.append("configs/ (the Hydra presets)")
    if missing:
        raise ExternalModelValidationError(f"model {model.name!r} ({package_dir}) is missing required parts: "
                                           f"{', '.join(missing)}")


def _check_conflicts(models: list[DeclaredModel]) -> None:
    by_name: dict[str, DeclaredModel] = {}
    for model in models:
        if model.name in CORE_FAMILIES:
            raise ExternalModelConflictError(f"model {model.name!r} (from {model.declared_in}) has the name of a core "
                                             f"xlm family; core names {list(CORE_FAMILIES)} are reserved")
        if model.name in by_name and by_name[model.name] != model:
            other = by_name[model.name]
            raise ExternalModelConflictError(f"Duplicate model name: {model.name!r} is declared in {other.declared_in}"
                                             f" ({other.root or other.package}) and in {model.declared_in} "
                                             f"({model.root or model.package})")
        by_name[model.name] = model


def _import(model: DeclaredModel, package: str, package_dir: Path) -> None:
    root = str(package_dir.parent)
    if model.root is not None and root not in sys.path:
        sys.path.insert(0, root)
    before = set(families.names())
    try:
        with registering_from(f"{model.declared_in}: {package_dir}"):
            importlib.import_module(package)
    except Exception as err:
        raise ExternalModelImportError(f"model {model.name!r}: importing its package {package!r} from {package_dir} "
                                       f"failed: {type(err).__name__}: {err}") from err
    if model.name not in families.names() and not (set(families.names()) - before):
        raise ExternalModelValidationError(f"model {model.name!r}: its package {package!r} imported but registered no "
                                           f"family; call xlm.register_family(Family(name={model.name!r}, ...)) in "
                                           f"its __init__.py")


def _load_one(model: DeclaredModel, package: str, package_dir: Path, configs: Path) -> None:
    _validate(model, package_dir, configs)
    _import(model, package, package_dir)
    _loaded[model.name] = LoadedModel(model.name, package, package_dir, configs, model.declared_in)


def _strict_default() -> bool:
    return os.environ.get("XLM_MODELS_STRICT", "1").lower() not in ("0", "false", "no")


def load_external_models(*, strict: bool | None = None) -> list[str]:
    """Discover, validate and import every declared model not loaded yet; their names."""
    global _scanned
    _scanned = True  # first: registry lookups made while importing a model must not start another scan
    strict = _strict_default() if strict is None else strict

    def fail(err: ExternalModelError) -> None:
        if strict:
            raise err
        warnings.warn(str(err), ExternalModelWarning, stacklevel=3)

    try:
        models = declared_models()
        _check_conflicts(models)
    except ExternalModelError as err:
        fail(err)
        return []
    # where each new model's package is, and no two models sharing one, before anything is imported
    packages = {m.package: m.name for m in _loaded.values()}
    located = []
    for model in (m for m in models if m.name not in _loaded):
        try:
            package, package_dir, configs = _package_of(model)
            if package in packages and packages[package] != model.name:
                raise ExternalModelConflictError(f"Python package conflict: both {packages[package]!r} and "
                                                 f"{model.name!r} define package {package!r}; give each model its "
                                                 f"own package name")
            packages[package] = model.name
            located.append((model, package, package_dir, configs))
        except ExternalModelError as err:
            fail(err)
    new = []
    for model, package, package_dir, configs in located:
        try:
            _load_one(model, package, package_dir, configs)
            new.append(model.name)
        except ExternalModelError as err:
            fail(err)
    return new


def load_external_models_once() -> None:
    """`load_external_models()` unless it has run; a strict failure is raised again by the next call."""
    global _scanned
    if _scanned:
        return
    try:
        load_external_models()
    except ExternalModelError:
        _scanned = False
        raise


def external_config_dirs() -> list[Path]:
    """The configs/ dirs of external models, for the Hydra search path."""
    load_external_models_once()
    return [m.configs for m in _loaded.values()]


def external_card_dirs() -> list[Path]:
    """The assets/cards/ dirs of external models, for the card store."""
    load_external_models_once()
    return [cards for m in _loaded.values() if (cards := m.package_dir.parent / "assets" / "cards").is_dir()]


def loaded_models() -> dict[str, LoadedModel]:
    return dict(_loaded)
