"""The layout of a finished run or export dir, and loading models from it.

    model.safetensors   weights (EMA weights when the run kept an EMA)
    config.json         format version, family, arch, full model config, sampler config,
                        tokenizer spec, task, and the train config that produced it
    metrics.json        the final evaluation and training summary
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from xlm.data.tokenizers import Tokenizer, tokenizer_from_spec
from xlm.errors import InvalidValueError, XlmUserError, listing, user_values
from xlm.io import read_json_object, save_safetensors, state_dict_for_safetensors, write_atomically
from xlm.model_bounds import check_extra_elements, meta_model, tied_aliases
from xlm.nn.config_checks import check_value_types
from xlm.registry import Family, UnknownNameError, get_family, unknown_name_message

FORMAT_VERSION = 1


class RunDirError(XlmUserError, ValueError):
    """A run dir that is missing files or holds an unreadable or incompatible model."""


def write_run_dir(path: Path, *, model: torch.nn.Module, family: str, arch: str, model_config: Any,
                  sampler_config: Any, tokenizer: Tokenizer | None, task: str | None,
                  train_config: Mapping[str, Any] | None, metrics: Mapping[str, Any]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    config = {"format_version": FORMAT_VERSION, "family": family, "family_source": get_family(family).source,
              "arch": arch,
              "model_config": asdict(model_config), "sampler_config": asdict(sampler_config),
              "tokenizer": tokenizer.spec() if tokenizer is not None else None, "task": task,
              "train_config": train_config}
    state = state_dict_for_safetensors(model.state_dict())
    tied = _tied_keys(model)
    for key in tied:
        state.pop(key, None)

    def write(tmp: Path) -> None:
        save_safetensors(state, tmp / "model.safetensors", metadata={"format": "pt", "xlm_tied": json.dumps(tied)})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(dict(metrics), indent=2) + "\n")

    # the three files land together: write them into a sibling dir and move them in
    staging = path.with_name(f".{path.name}.export")
    write_atomically(staging, write)
    for name in ("model.safetensors", "config.json", "metrics.json"):
        (staging / name).replace(path / name)
    staging.rmdir()


def _tied_keys(model: torch.nn.Module) -> list[str]:
    """State-dict keys that alias an earlier key's storage (tied heads): saved once."""
    seen: dict[int, str] = {}
    tied = []
    for key, tensor in model.state_dict(keep_vars=True).items():
        ptr = tensor.data_ptr()
        if ptr in seen and tensor.numel() > 0:
            tied.append(key)
        else:
            seen[ptr] = key
    return tied


def is_run_dir(path: Path) -> bool:
    """Whether `path` is a run or export dir: its config.json says which format version it is written in."""
    file = path / "config.json"
    if not (path.is_dir() and file.is_file()):
        return False
    try:
        config = json.loads(file.read_bytes())
    except ValueError:  # not JSON, or not UTF-8
        return False
    return isinstance(config, dict) and "format_version" in config


def read_run_config(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    if not file.exists():
        if (path / "checkpoints").is_dir():
            raise RunDirError(f"{path} is a run that has not finished: its config.json and final model are written "
                              f"at the end. Finish or resume it, or export one of its checkpoints with `xlm convert "
                              f"--from {path} --checkpoint last --out NEW_DIR`")
        raise RunDirError(f"{path} is not a run or export dir: it has no config.json")
    config = read_json_object(file, RunDirError)
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise RunDirError(f"{file} has format_version {version!r}; this xlm reads version {FORMAT_VERSION}")
    if not isinstance(config.get("family"), str) or not isinstance(config.get("model_config"), dict):
        raise RunDirError(f"{file} names no family (a string) and model_config (an object); it was not written "
                          f"by xlm or has been edited")
    return config


def run_family(path: Path, config: Mapping[str, Any]) -> Family:
    """The family a run dir's config.json names. One that is not registered here names where the run found it:
    a plugin declared in another directory is not discovered from this one."""
    try:
        return get_family(config["family"])
    except UnknownNameError:
        source = config.get("family_source")
        if not isinstance(source, str) or source == "core":
            raise
        raise UnknownNameError(f"{path} was trained with the model family {config['family']!r} from {source}, "
                               f"which is not found from here ({Path.cwd()}): run from the directory that declares "
                               f"it, add that directory to $XLM_MODELS_PATH, or pip install its package") from None


def build_dataclass(cls: type, values: Mapping[str, Any], where: str, *, kind: str = "key") -> Any:
    """`cls(**values)`; a key it lacks is one error naming the close matches among its fields, a value of the
    wrong type one naming the field (for any family's config, a plugin's too)."""
    known = [f.name for f in fields(cls)]
    if unknown := sorted(set(values) - set(known)):
        raise RunDirError(f"{where}: " + "; ".join(unknown_name_message(kind, key, known) for key in unknown))
    try:
        check_value_types(cls, values)
    except TypeError as err:
        raise InvalidValueError(f"{where}: {err}") from None
    with user_values():
        return cls(**values)


def load_run_model(path: str | Path, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                   config_overrides: Mapping[str, Any] | None = None) -> torch.nn.Module:
    path = Path(path)
    config = read_run_config(path)
    family = run_family(path, config)
    values = {**config["model_config"], **(config_overrides or {})}
    where = f"{path / 'config.json'} model_config"
    try:
        model_config = build_dataclass(family.config_class, values, where)
    except InvalidValueError as err:  # the file is named: it may have come with a download
        raise RunDirError(f"{where}: {err}") from None
    weights = path / "model.safetensors"
    if not weights.exists():
        raise RunDirError(f"{path} has no model.safetensors: the run has not finished (its checkpoints are "
                          f"in {path / 'checkpoints'}; rerun the train command to resume it)")
    try:
        state = load_file(weights, device=str(device) if device is not None else "cpu")
    except Exception as err:
        raise RunDirError(f"{weights} is unreadable ({type(err).__name__}: {err}); it may be truncated") from None
    with user_values():  # the config's sizes are checked against the weights before any memory is allocated
        meta = meta_model(family.factory, model_config, tensors=len(state), where=str(path / "config.json"))
    check_state_fits(meta, state, where=str(weights))
    check_extra_elements(meta, state, where=str(path / "config.json"))
    model = family.factory(model_config, device=device, dtype=dtype)
    load_state_strict(model, state, where=str(weights))
    return model.eval()


def check_state_fits(model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, where: str) -> None:
    """Missing, unexpected and wrong-shape keys, reported together (tied aliases may be absent); `model`
    may be on the meta device."""
    expected = model.state_dict()
    tied = set(tied_aliases(model))
    missing = sorted(k for k in expected if k not in state and k not in tied)
    unexpected = sorted(k for k in state if k not in expected)
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                    for k in state if k in expected and state[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        parts = [f"missing keys [{listing(missing, 10)}]" if missing else "",
                 f"unexpected keys [{listing(unexpected, 10)}]" if unexpected else "",
                 f"wrong shapes [{listing(shapes, 5)}]" if shapes else ""]
        raise RunDirError(f"{where} does not fit the model: " + "; ".join(p for p in parts if p))


def load_state_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, where: str) -> None:
    """`state` into `model`, once `check_state_fits` says it fits."""
    check_state_fits(model, state, where=where)
    model.load_state_dict(dict(state), strict=False)


def load_run_tokenizer(path: str | Path) -> Tokenizer:
    spec = read_run_config(Path(path))["tokenizer"]
    if spec is None:
        raise RunDirError(f"{path} was exported without a tokenizer; pass tokenizer= to xlm.export, or load the "
                          f"tokenizer it was trained with separately")
    return tokenizer_from_spec(spec)


def load_run_sampler_config(path: str | Path, **overrides: Any) -> Any:
    config = read_run_config(Path(path))
    family = run_family(Path(path), config)
    values = {**config.get("sampler_config", {}), **overrides}
    return build_dataclass(family.sampler_config_class, values, f"{family.name} sampler settings",
                           kind="sampler key")
