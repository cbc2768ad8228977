"""What format detection looks at in a checkpoint, read once and only as far as asked.

Every converter's `recognises` gets the same `CheckpointProbe`, so a file is opened once however many
converters look at it, and only when one of them asks: a safetensors file gives its tensor names from
its header alone, a pickled checkpoint is read with torch.load(weights_only=True) and its tensors
memory-mapped (not loaded), a sharded index gives the names in its weight map.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from torch import Tensor

from xlm.errors import ConversionError
from xlm.io import read_json_object

from .readers import hf_weights_file, index_weight_map, is_safetensors, read_checkpoint, safetensors_names, to_plain

__all__ = ["CheckpointProbe"]


@dataclass(eq=False)
class CheckpointProbe:
    """A model dir or a checkpoint file, seen from outside: its config.json, its tensor names and, for a
    Lightning checkpoint, its hyper-parameters. Each is read on first use and kept."""

    path: Path

    @cached_property
    def config(self) -> Mapping[str, Any] | None:
        """A model dir's config.json (None for a file, or a dir without one)."""
        file = self.path / "config.json"
        if not (self.path.is_dir() and file.is_file()):
            return None
        return read_json_object(file, ConversionError)

    @property
    def model_type(self) -> str | None:
        """The `model_type` a model dir's config.json declares (HF transformers' name of the layout)."""
        model_type = (self.config or {}).get("model_type")
        return model_type if isinstance(model_type, str) else None

    @cached_property
    def weights_file(self) -> Path | None:
        """The file holding the tensors: the path itself, or a model dir's weights file."""
        return hf_weights_file(self.path) if self.path.is_dir() else self.path

    @cached_property
    def _pickled(self) -> Any:
        """A pickled checkpoint's content (tensors memory-mapped); None for safetensors, an index or no file."""
        file = self.weights_file
        if file is None or not file.is_file() or file.name.endswith(".index.json") or is_safetensors(file):
            return None
        return read_checkpoint(file)

    @cached_property
    def keys(self) -> frozenset[str]:
        """The tensor names, as stored (a Lightning checkpoint's are its `state_dict`'s)."""
        file = self.weights_file
        if file is None or not file.is_file():
            return frozenset()
        if file.name.endswith(".index.json"):
            return frozenset(index_weight_map(file))
        if is_safetensors(file):
            return frozenset(safetensors_names(file))
        content = self._pickled
        if isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping):
            content = content["state_dict"]
        if not isinstance(content, Mapping):
            return frozenset()
        return frozenset(k for k, v in content.items() if isinstance(k, str) and isinstance(v, Tensor))

    @cached_property
    def hyper_parameters(self) -> Mapping[str, Any] | None:
        """A Lightning checkpoint's hyper-parameters as plain Python, interpolations resolved (None otherwise)."""
        content = self._pickled
        if not (isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping)):
            return None
        hyper = to_plain(content.get("hyper_parameters"), resolve=True)
        return hyper if isinstance(hyper, Mapping) else None
