"""Safe readers for checkpoint files and model dirs: safetensors, HF model dirs and sharded
indexes, Lightning `.ckpt` and model-only `.pt` files, all pickles read with `weights_only=True`.
"""

from __future__ import annotations

import json
import pickle
import re
import typing
import zipfile
from collections import OrderedDict, defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from xlm.errors import CheckpointReadError, ConversionError, PathNotFoundError
from xlm.io import read_json_object

__all__ = ["hf_weights_file", "is_safetensors", "read_checkpoint", "read_hf_dir", "read_state_dict",
           "safetensors_names", "to_plain"]


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
    reason = str(last_error).splitlines()[0] if last_error else ""
    reason = re.split(r"\s+In PyTorch 2\.6, we changed", reason)[0]  # not torch's advice to turn weights_only off
    raise CheckpointReadError(f"{path} could not be read as a checkpoint: it looks like {_apparent_format(path)} "
                              f"and loading it with torch.load(weights_only=True) failed "
                              f"({type(last_error).__name__}: {reason})")


def is_safetensors(path: Path) -> bool:
    """Whether a file is safetensors, by its name or, whatever it is called, by its first bytes."""
    return path.suffix == ".safetensors" or _apparent_format(path) == "a safetensors file"


def safetensors_names(path: str | Path) -> list[str]:
    """The tensor names of a safetensors file, read from its header alone (no tensor is loaded)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as err:
        raise _unreadable_safetensors(path, err) from None


def _unreadable_safetensors(path: str | Path, err: Exception) -> CheckpointReadError:
    return CheckpointReadError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err}); it may be "
                               f"truncated")


def read_checkpoint(path: str | Path) -> Any:
    """A checkpoint file's content: a `.safetensors` file gives its tensors; anything else is read with
    torch.load(weights_only=True) (see `_load_pickled`). Use `to_plain` on configs inside."""
    path = Path(path)
    if not path.is_file():
        raise PathNotFoundError(f"no checkpoint file at {path}")
    if is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as err:
            raise _unreadable_safetensors(path, err) from None
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
        state: dict[str, Tensor] = {}
        for shard in index_shards(path):
            state.update(_tensors_only(read_checkpoint(shard), shard))
        return state
    return _tensors_only(read_checkpoint(path), path)


def index_weight_map(index: Path) -> dict[str, str]:
    """A sharded HF index's `weight_map`: tensor name -> shard file name."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (ValueError, AttributeError) as err:  # not JSON, not UTF-8, not an object
        raise CheckpointReadError(f"{index} is not a sharded checkpoint index ({type(err).__name__}: {err})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointReadError(f"{index} has no weight_map of tensor names to shard file names")
    return weight_map


def index_shards(index: Path) -> list[Path]:
    """The shard files a sharded HF index (`*.index.json`) names in its `weight_map`: each a weights file
    inside the index's own directory or below it (symbolic links resolved), never another index."""
    home = index.parent.resolve()
    shards = []
    for name in sorted(set(index_weight_map(index).values())):
        shard = (index.parent / name).resolve()
        if not shard.is_relative_to(home):  # '../x', 'sub/../../x', an absolute path or a link out of the dir
            raise CheckpointReadError(f"{index} names the shard {name!r}, which is outside {index.parent}; shards "
                                      f"must sit in their index's dir")
        if shard.name.endswith(".index.json"):
            raise CheckpointReadError(f"{index} names another index, {name!r}, as a shard; shards hold weights")
        shards.append(shard)
    return shards


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def hf_weights_file(directory: Path) -> Path | None:
    """The weights file of an HF-style model dir (safetensors before pickles, one file before an index)."""
    return next((directory / name for name in _WEIGHT_FILES if (directory / name).is_file()), None)


def read_hf_dir(path: str | Path, *, model_type: str | None = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config.json, state dict) of an HF-style model dir, or of a weights file with a config.json beside it;
    `model_type`, when given, must be what config.json says (or config.json says none)."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"no config.json in {directory}: converters read the model's sizes from it", source=path)
    config = read_json_object(config_file, ConversionError)
    if model_type is not None and config.get("model_type") not in (None, model_type):
        raise ConversionError(f"config.json has model_type {config.get('model_type')!r}, not {model_type!r}",
                              source=directory)
    if path.is_dir():
        weights = hf_weights_file(directory)
        if weights is None:
            raise ConversionError(f"{directory} has no weights file (looked for {', '.join(_WEIGHT_FILES)})")
    else:
        weights = path
    return config, read_state_dict(weights)
