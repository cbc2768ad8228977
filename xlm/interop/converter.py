"""What a checkpoint converter is: one foreign layout of one family, both ways, with the reader
that opens it; and what a conversion gives back.

Every family's `interop.py` builds its converters from these parts and the key maps of
`xlm.interop.keymap`; `converter(path)` gives `(config, state)` for `load_model`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor

from xlm.errors import ConversionError, XlmError, listing

from .probe import CheckpointProbe
from .readers import read_hf_dir

__all__ = ["Converted", "Converter", "FromXlm", "ToXlm", "config_dict", "require"]




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
            lines.append(f"dropped {len(self.dropped)} key(s): {listing(self.dropped)}")
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
    `hf=True` marks layouts that transformers' Auto classes load (used by `export(format="hf")`).

    What `xlm.interop.detect` recognises it by, so that `xlm.load_model(path)` needs no format name:
    `hf_model_types`, the `model_type` values of a model dir's config.json in this layout;
    `recognises(probe)`, a signature of a checkpoint file or dir (its tensor names, its hyper-parameters;
    see `CheckpointProbe`), cheap and never running code from the file; and `needs_config`, whether a
    weights file of this layout comes with a config.json beside it (a card's download fetches both)."""

    name: str
    description: str
    to_xlm: ToXlm
    from_xlm: FromXlm | None = None
    export_problems: Callable[[Any], list[str]] | None = None
    read: Callable[[Path], tuple[dict[str, Any], dict[str, Tensor]]] | None = None
    hf: bool = False
    hf_model_types: tuple[str, ...] = ()
    recognises: Callable[[CheckpointProbe], bool] | None = None
    needs_config: bool = False

    def __call__(self, path: str | Path) -> Converted:
        path = Path(path)
        source_config, state = (self.read or read_hf_dir)(path)
        try:
            return self.to_xlm(state, source_config, source=str(path))
        except XlmError:
            raise
        except (TypeError, ValueError, KeyError) as err:  # a config value of the wrong type or out of range
            raise ConversionError(f"its config does not describe a {self.name} checkpoint ({type(err).__name__}: "
                                  f"{err})", source=path) from err
