"""External model families: found by directory files or installed packages, validated, imported.

Routes, in order:

* ``xlm_models.json`` (``{"name": "relative/path"}``) and the legacy ``.xlm_models`` (one name per
  line, ``#`` comments, the path is the name) in the current directory, in ``./xlm-models/`` and in
  each directory of ``$XLM_MODELS_PATH``. A relative path must stay inside the directory of the
  file that declares it (symbolic links followed), so a file dropped into a directory cannot pull
  in code from beyond it; a model elsewhere is declared by its absolute path;
* installed packages named in ``$XLM_MODELS_PACKAGES`` (colon-separated), and packages that
  declare an ``xlm.models`` entry point.

A model's root holds its Python package (``root/<name>/``, or the one package there) and its
``configs/``. Its root goes on ``sys.path`` (the root, never the current directory), the
package is imported and registers its family with ``xlm.register_family``; its ``configs/``
joins the Hydra search path and its ``assets/cards/`` the card store. Importing a model that a
file in the current directory declared says so in one line on stderr, since that code runs only
because of where the command was started.

Discovery runs on demand, never at ``import xlm``, and again when the current directory or the
``$XLM_MODELS_*`` settings have changed since the last scan. Only a lookup that misses among the
loaded families and tasks *needs* a plugin: it raises the first problem of the scan as an
:class:`ExternalModelError` subclass (strict, the default; ``XLM_MODELS_STRICT=0`` warns instead).
Listing the registries, the card store and the Hydra search path only warn, so a broken
declaration cannot stop work that uses no plugin. :func:`load_external_models` scans again and
is strict by default.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from xlm.errors import XlmUserError, XlmWarning
from xlm.registry import families, registering_from

CORE_FAMILIES = ("arlm", "mlm", "ilm", "mdlm")
REQUIRED_MODULES = ("model", "loss", "predictor", "collators")
MODELS_FILE = "xlm_models.json"
LEGACY_MODELS_FILE = ".xlm_models"
ENTRY_POINT_GROUP = "xlm.models"
MAX_MODELS_FILE_BYTES = 1 << 20  # a models file maps a few names to paths; anything larger is not one


class ExternalModelError(XlmUserError):
    """Base of every plugin discovery error."""


class ExternalModelConflictError(ExternalModelError):
    """Two models share a name or a package, or a model takes a core family's name."""


class ExternalModelNotFoundError(ExternalModelError):
    """A declared model is not where its declaration says."""


class ExternalModelValidationError(ExternalModelError):
    """A model lacks a required part, or its declaration is malformed or points outside its directory."""


class ExternalModelImportError(ExternalModelError):
    """A model's package failed to import (the original error is attached as __cause__)."""


class ExternalModelWarning(XlmWarning):
    """A discovery problem reported without stopping (non-strict mode, or no plugin was needed)."""


@dataclass(frozen=True, kw_only=True)
class DeclaredModel:
    name: str
    root: Path | None  # directory route: the model's root dir; package route: None until found
    declared_in: str  # the file or setting that named it
    package: str | None = None  # package route: the importable package name
    from_cwd: bool = False  # declared by a file found through the current directory: its import is announced


@dataclass(frozen=True, kw_only=True)
class LoadedModel:
    name: str
    package: str
    package_dir: Path
    configs: Path
    declared_in: str


_loaded: dict[str, LoadedModel] = {}
_scanned: tuple[str, ...] | None = None  # the settings of the last scan (`_scan_context`); None before any
_problems: list[ExternalModelError] = []  # those of the last scan, raised again when a lookup needs a plugin


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:  # the current directory was deleted: it declares nothing
        return ""


def _cwd_dirs() -> list[Path]:
    cwd = _cwd()
    return [Path(cwd), Path(cwd) / "xlm-models"] if cwd else []


def search_dirs() -> list[Path]:
    """Where models files are looked for: the current directory, ./xlm-models/, each of $XLM_MODELS_PATH."""
    return [*_cwd_dirs(), *(Path(p) for p in os.environ.get("XLM_MODELS_PATH", "").split(":") if p)]


def _scan_context() -> tuple[str, ...]:
    """What a scan's result depends on besides installed packages: a change means scanning again."""
    return (_cwd(), *(os.environ.get(v, "") for v in ("XLM_MODELS_PATH", "XLM_MODELS_PACKAGES")))


def _quoted(value: object, limit: int = 200) -> str:
    """repr(value), shortened: declarations are untrusted, and a message need not echo a path of any length."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _read_text(path: Path) -> str:
    """A models file's text; an ExternalModelValidationError when it cannot be one."""
    try:
        size = path.stat().st_size
        if size > MAX_MODELS_FILE_BYTES:
            raise ExternalModelValidationError(f"{path} is {size} bytes, more than a models file holds "
                                               f"({MAX_MODELS_FILE_BYTES}); it maps model names to paths")
        data = path.read_bytes()
    except OSError as err:
        raise ExternalModelValidationError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ExternalModelValidationError(f"{path} is not UTF-8 text (byte {err.start}, line {line}); it maps "
                                           f"model names to paths") from None


def _checked_name(path: Path, name: str) -> str:
    """A model name, which also names its package directory: one path component."""
    if name in ("", ".", "..") or "/" in name or os.sep in name or "\0" in name:
        raise ExternalModelValidationError(f"{path}: model name {_quoted(name)} is not a directory name (it names "
                                           f"the model's package directory); use a Python identifier, e.g. my_model")
    return name


def _root(path: Path, name: str, where: str) -> Path:
    """The model root an entry of `path` names: an absolute path as written; a relative one resolved
    against the file's directory and refused when it leads outside it."""
    declared = f"{path}: model {_quoted(name)} is declared at {_quoted(where)}"
    try:
        root = (path.parent / where).resolve()
        base = path.parent.resolve()
    except (OSError, RuntimeError, ValueError) as err:  # a symlink loop, a NUL byte, a name too long
        raise ExternalModelValidationError(f"{declared}, which cannot be resolved ({_quoted(str(err))}); give the "
                                           f"path of its root directory") from None
    if not Path(where).is_absolute() and not root.is_relative_to(base):
        raise ExternalModelValidationError(
            f"{declared}, which leads to {_quoted(str(root))}, outside {base} (the directory that declares it); a "
            f"relative path must stay inside that directory: move the model there, or write its absolute path if "
            f"that location is meant")
    return root


def _read_models_file(path: Path, from_cwd: bool) -> tuple[list[DeclaredModel], list[ExternalModelError]]:
    """The models a JSON models file declares, and the problems of its entries (each skips only itself)."""
    try:
        entries = json.loads(_read_text(path))
    except (ValueError, RecursionError) as err:  # JSONDecodeError, or nesting too deep to parse
        raise ExternalModelValidationError(f"{path} is not valid JSON ({type(err).__name__}: {err}); it maps model "
                                           f'names to paths, e.g. {{"my_model": "my_model"}}') from None
    if not isinstance(entries, dict):
        raise ExternalModelValidationError(f'{path} must hold a JSON object mapping model names to paths, e.g. '
                                           f'{{"my_model": "my_model"}}; it holds a {type(entries).__name__}')
    models: list[DeclaredModel] = []
    problems: list[ExternalModelError] = []
    for name, where in entries.items():
        try:
            if not isinstance(where, str):
                raise ExternalModelValidationError(f"{path}: model {_quoted(name)} maps to {_quoted(where)}; it "
                                                   f"must map to the path of its root directory, e.g. "
                                                   f'{{"my_model": "my_model"}}')
            root = _root(path, _checked_name(path, name), where)
            models.append(DeclaredModel(name=name, root=root, declared_in=str(path), from_cwd=from_cwd))
        except ExternalModelError as err:
            problems.append(err)
    return models, problems


def _read_legacy_file(path: Path, from_cwd: bool) -> tuple[list[DeclaredModel], list[ExternalModelError]]:
    names = [line.split("#", 1)[0].strip() for line in _read_text(path).splitlines()]
    models: list[DeclaredModel] = []
    problems: list[ExternalModelError] = []
    for name in filter(None, names):
        try:
            root = _root(path, _checked_name(path, name), name)
            models.append(DeclaredModel(name=name, root=root, declared_in=str(path), from_cwd=from_cwd))
        except ExternalModelError as err:
            problems.append(err)
    return models, problems


def declared_models() -> tuple[list[DeclaredModel], list[ExternalModelError]]:
    """Every declared model, and the problems of the declarations that could not be read."""
    out: list[DeclaredModel] = []
    problems: list[ExternalModelError] = []
    seen_files: set[Path] = set()
    cwd_dirs = _cwd_dirs()
    for directory in search_dirs():
        for file, reader in ((directory / MODELS_FILE, _read_models_file),
                             (directory / LEGACY_MODELS_FILE, _read_legacy_file)):
            try:
                if not file.is_file() or file.resolve() in seen_files:
                    continue
                seen_files.add(file.resolve())
                models, bad = reader(file, directory in cwd_dirs)
            except OSError as err:  # a name too long, a directory that cannot be read
                models, bad = [], [ExternalModelValidationError(f"cannot read {_quoted(str(file))}: {err.strerror}")]
            except ExternalModelError as err:
                models, bad = [], [err]
            out += models
            problems += bad
    for package in (p for p in os.environ.get("XLM_MODELS_PACKAGES", "").split(":") if p):
        out.append(DeclaredModel(name=package, root=None, declared_in="$XLM_MODELS_PACKAGES", package=package))
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        out.append(DeclaredModel(name=entry.name, root=None, package=entry.value.split(":")[0],
                                 declared_in=f"the {ENTRY_POINT_GROUP!r} entry point of {entry.value}"))
    return out, problems


@contextlib.contextmanager
def _os_errors_of(model: DeclaredModel) -> Iterator[None]:
    """An OSError while looking at a model's files (a name too long, a directory that cannot be read) reported
    as the model's problem."""
    try:
        yield
    except OSError as err:
        raise ExternalModelNotFoundError(f"model {model.name!r} declared in {model.declared_in}: cannot read "
                                         f"{_quoted(str(err.filename))}: {err.strerror}") from None


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
        raise ExternalModelNotFoundError(f"model {model.name!r} declared in {model.declared_in} not found: "
                                         f"{model.root} is not a directory")
    candidates = [model.root / model.name] if (model.root / model.name).is_dir() else [
        d for d in model.root.iterdir() if (d / "__init__.py").is_file()]
    if len(candidates) != 1:
        raise ExternalModelValidationError(f"model {model.name!r} ({model.root}): expected its Python package at "
                                           f"{model.root / model.name}/ (a directory with __init__.py)")
    if not candidates[0].resolve().is_relative_to(model.root):
        raise ExternalModelValidationError(f"model {model.name!r} ({model.root}): its package {candidates[0]} links "
                                           f"to {candidates[0].resolve()}, outside the model's root; put the package "
                                           f"itself there")
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
    if model.from_cwd:
        print(f"note: importing model family {model.name!r}: package {package!r} from {package_dir}, declared in "
              f"{model.declared_in}", file=sys.stderr, flush=True)
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
    _loaded[model.name] = LoadedModel(name=model.name, package=package, package_dir=package_dir, configs=configs,
                                      declared_in=model.declared_in)


def _strict_default() -> bool:
    return os.environ.get("XLM_MODELS_STRICT", "1").lower() not in ("0", "false", "no")


def _scan(*, strict: bool) -> tuple[list[str], list[ExternalModelError]]:
    """Import every declared model not loaded yet: (their names, the problems met). Strict stops at the
    first problem and imports nothing while a declaration is wrong; otherwise the sound models load."""
    models, problems = declared_models()
    if strict and problems:
        return [], problems
    try:
        _check_conflicts(models)
    except ExternalModelError as err:
        return [], [*problems, err]
    # where each new model's package is, and no two models sharing one, before anything is imported
    packages = {m.package: m.name for m in _loaded.values()}
    located = []
    for model in (m for m in models if m.name not in _loaded):
        try:
            with _os_errors_of(model):
                package, package_dir, configs = _package_of(model)
            if package in packages and packages[package] != model.name:
                raise ExternalModelConflictError(f"Python package conflict: both {packages[package]!r} and "
                                                 f"{model.name!r} define package {package!r}; give each model its "
                                                 f"own package name")
            packages[package] = model.name
            located.append((model, package, package_dir, configs))
        except ExternalModelError as err:
            if strict:
                return [], [err]
            problems.append(err)
    new = []
    for model, package, package_dir, configs in located:
        try:
            with _os_errors_of(model):
                _load_one(model, package, package_dir, configs)
            new.append(model.name)
        except ExternalModelError as err:
            problems.append(err)
            if strict:
                break
    return new, problems


def load_external_models(*, strict: bool | None = None) -> list[str]:
    """Discover, validate and import every declared model not loaded yet; their names. The first problem
    raises (strict, the default) or each one warns."""
    global _scanned
    # first: registry lookups made while importing a model must not start another scan (nor rescan over old problems)
    _scanned = _scan_context()
    _problems.clear()
    strict = _strict_default() if strict is None else strict
    new, problems = _scan(strict=strict)
    _problems.extend(problems)
    if strict and problems:
        raise problems[0]
    for problem in problems:
        _warn(problem)
    return new


_warned: dict[object, object] = {}  # `_warn`'s warnings registry: the default filter shows each problem once


def _warn(problem: ExternalModelError) -> None:
    """One line on stderr (under the default filter): the message says which file; a line of this module would not."""
    warnings.warn_explicit(str(problem), ExternalModelWarning, filename="xlm.plugins", lineno=0,
                           module=__name__, registry=_warned)


def load_external_models_once(*, needed: bool = True) -> None:
    """The on-demand scan, unless one ran with the present settings. `needed`: a lookup missed among the
    loaded names, so a plugin may hold it; then the problems of a scan are raised (strict), and a scan
    that had any runs again. Otherwise they only warn: nothing asked for a plugin."""
    if _scanned != _scan_context():
        load_external_models(strict=needed and _strict_default())
    elif needed and _problems and _strict_default():
        load_external_models()


def external_config_dirs() -> list[Path]:
    """The configs/ dirs of external models, for the Hydra search path."""
    load_external_models_once(needed=False)
    return [m.configs for m in _loaded.values()]


def external_card_dirs() -> list[Path]:
    """The assets/cards/ dirs of external models, for the card store."""
    load_external_models_once(needed=False)
    return [cards for m in _loaded.values() if (cards := m.package_dir.parent / "assets" / "cards").is_dir()]


def loaded_models() -> dict[str, LoadedModel]:
    return dict(_loaded)
