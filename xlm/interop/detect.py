"""Which family and layout a checkpoint is in, asked of every registered family's converters.

    detect_format("gpt2/")                      # ("arlm", "hf_gpt2"): its config.json says model_type "gpt2"
    detect_format("mdlm/last.ckpt")             # ("mdlm", "mdlm_reference"): the reference DiT's tensor names
    detect_format("last.ckpt", family="ilm")    # ("ilm", "xlm_core"): the only layout ILM reads
    detect_format("runs/r")                     # ("arlm", "xlm"): a run or export dir, xlm's own layout

A dir whose config.json has `format_version` is xlm's own layout. Otherwise a model dir is known by its
config.json's `model_type` (`Converter.hf_model_types`), and when none declares that, a dir or file by the
converters' signatures (`Converter.recognises`). Plugin families' converters are asked like the core's, so
a family adds a format by declaring it on its converter. Two converters recognising one checkpoint, or none,
is an error naming them (or what was tried) and the argument that settles it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from xlm.errors import XlmUserError
from xlm.registry import CheckpointConverter, Family, families, get_family, unknown_name_message
from xlm.run_dir import is_run_dir, read_run_config, run_family

from .probe import CheckpointProbe

__all__ = ["XLM_FORMAT", "FormatDetectionError", "converter_for", "detect_format", "needs_config"]

#: xlm's own layout: a run or export dir (model.safetensors + config.json with `format_version`).
XLM_FORMAT = "xlm"
#: Where a command, not Python, met the checkpoint: the options that are family= and checkpoint_format=.
ON_THE_COMMAND_LINE = "(xlm convert: --family, --format)"

Layout = tuple[str, str]  # (family, converter name)


class FormatDetectionError(XlmUserError, ValueError):
    """A checkpoint whose layout cannot be told (no converter, or several, recognise it), or a format
    name that no family reads."""


def _hf_model_types(converter: CheckpointConverter) -> tuple[str, ...]:
    return tuple(getattr(converter, "hf_model_types", ()))


def _layouts(family: str | None = None) -> dict[Layout, CheckpointConverter]:
    names = families.names() if family is None else [family]
    return {(f, name): converter for f in names for name, converter in families.get(f).converters.items()}


def _named(layouts: list[Layout] | Mapping[Layout, object]) -> str:
    return ", ".join(f"{f}/{name}" for f, name in layouts)


def _recognised(layouts: Mapping[Layout, CheckpointConverter], probe: CheckpointProbe) -> list[Layout]:
    """The layouts whose `hf_model_types` hold the dir's model_type; when none does, those whose signature
    the checkpoint shows."""
    model_type = probe.model_type
    if model_type is not None:
        declared = [layout for layout, c in layouts.items() if model_type in _hf_model_types(c)]
        if declared:
            return declared
    return [layout for layout, c in layouts.items()
            if (recognises := getattr(c, "recognises", None)) is not None and recognises(probe)]


def converter_for(family: Family, fmt: str) -> CheckpointConverter:
    """The family's converter named `fmt`, or an error naming the close matches and every layout it reads."""
    converter = family.converters.get(fmt)
    if converter is None:
        known = [XLM_FORMAT, *family.converters]
        raise FormatDetectionError(f"family {family.name!r}: {unknown_name_message('checkpoint format', fmt, known)}")
    return converter


def needs_config(fmt: str, family: str | None = None) -> bool:
    """Whether a weights file in layout `fmt` comes with a config.json beside it: xlm's own does; a
    converter says so (of `family`, or of any family when none is given)."""
    if fmt == XLM_FORMAT:
        return True
    return any(getattr(c, "needs_config", False) for (_, name), c in _layouts(family).items() if name == fmt)


def _owner_of(fmt: str, probe: CheckpointProbe) -> Layout:
    """The family whose layout `fmt` is; when several have one of that name, the one the checkpoint shows."""
    everything = _layouts()
    owners = {layout: c for layout, c in everything.items() if layout[1] == fmt}
    if len(owners) == 1:
        return next(iter(owners))
    if not owners:
        raise FormatDetectionError(unknown_name_message("checkpoint format", fmt,
                                                        sorted({XLM_FORMAT, *(name for _, name in everything)})))
    found = _recognised(owners, probe)
    if len(found) == 1:
        return found[0]
    shown = f"it looks like {_named(found)}" if found else "it shows none of them"
    raise FormatDetectionError(f"checkpoint_format {fmt!r} is a layout of {len(owners)} families ({_named(owners)}) "
                               f"and {probe.path} does not tell which ({shown}); pass family= {ON_THE_COMMAND_LINE}")


def _reads(family: str) -> str:
    names = list(get_family(family).converters)
    return f"family {family!r} reads {', '.join(names)}" if names else f"family {family!r} has no converters"


def _nothing_recognised(probe: CheckpointProbe, family: str | None) -> FormatDetectionError:
    everything = _layouts()
    model_types = [f"{t} -> {f}/{name}" for (f, name), c in everything.items() for t in _hf_model_types(c)]
    signatures = _named([layout for layout, c in everything.items() if getattr(c, "recognises", None) is not None])
    if probe.model_type is not None:
        seen = f"its config.json's model_type {probe.model_type!r} is none of the known ones"
    else:
        seen = "no converter recognises it"
    if family is None:
        fix = (f"pass family= (one of {', '.join(families.names())}) and, where the family reads several layouts, "
               f"checkpoint_format= {ON_THE_COMMAND_LINE}")
    else:
        fix = f"pass checkpoint_format= ({_reads(family)}) {ON_THE_COMMAND_LINE}"
    return FormatDetectionError(f"cannot tell what {probe.path} holds: {seen} (model types: {'; '.join(model_types)};"
                                f" signatures of {signatures or 'none'}); {fix}")


def detect_format(path: str | Path, family: str | None = None, fmt: str | None = None) -> Layout:
    """(family, format) of a checkpoint dir or file. `family` and `fmt`, where given, settle what the checkpoint
    alone cannot (a run dir is xlm's own layout whatever they say); a family with one layout needs no `fmt`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if fmt == XLM_FORMAT or is_run_dir(path):
        return run_family(path, read_run_config(path)).name, XLM_FORMAT
    only = None
    if family is not None:
        if fmt is not None:
            converter_for(get_family(family), fmt)
            return family, fmt
        converters = list(get_family(family).converters)
        only = converters[0] if len(converters) == 1 else None
        if only is not None and not path.is_dir():  # a file: it need not be opened
            return family, only
    probe = CheckpointProbe(path)
    if fmt is not None:
        return _owner_of(fmt, probe)
    found = _recognised(_layouts(), probe)
    mine = [layout for layout in found if family is None or layout[0] == family]
    if len(mine) == 1:
        return mine[0]
    if mine:
        settle = "checkpoint_format=" if family is not None else "family= and checkpoint_format="
        raise FormatDetectionError(f"{path} is recognised by {len(mine)} converters ({_named(mine)}); pass {settle} "
                                   f"to say which it is {ON_THE_COMMAND_LINE}")
    if found:
        raise FormatDetectionError(f"{path} looks like {_named(found)}, not a layout of family {family!r} "
                                   f"({_reads(family)}); check family= {ON_THE_COMMAND_LINE}")
    if only is not None:
        return family, only
    raise _nothing_recognised(probe, family)
