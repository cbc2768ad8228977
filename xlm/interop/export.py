"""Export a model: xlm's own format, HF transformers, or another layout a family converts to.

    xlm.export(model, "out/ours")                          # model.safetensors + config.json (xlm.load_model reads it)
    xlm.export(model, "out/hf", format="hf", tokenizer=tok)
    transformers.AutoModelForCausalLM.from_pretrained("out/hf")   # ARLM as GPT-2 or Llama, MLM as BERT
    xlm.export(mdlm, "out/ref", format="mdlm_reference")   # any converter name of the model's family

`format="hf"` picks the family's HF layout that can hold the config (ARLM: learned positions +
layernorm -> GPT-2, rope + rmsnorm + swiglu -> Llama); when none can, the error lists, per layout,
what differs. Weights are written as safetensors; files land together (written beside the target,
then moved in).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from xlm.errors import ConversionError, XlmUserError, listing
from xlm.io import new_temp_dir
from xlm.interop.converter import Converter
from xlm.registry import Family, families

__all__ = ["ExportError", "check_export_dir", "export", "family_of_model", "hf_converter_for"]


class ExportError(XlmUserError, ValueError):
    """A model that the requested format cannot represent; the message says what differs."""


def family_of_model(model: torch.nn.Module) -> Family:
    """The registered family whose config class `model.config` is an instance of."""
    config = getattr(model, "config", None)
    for name in families.names():
        family = families.get(name)
        if isinstance(config, family.config_class):
            return family
    raise ExportError(f"{type(model).__name__} (config {type(config).__name__}) belongs to no registered family: "
                      f"xlm exports models whose .config is a family's config class")


def _converters(family: Family) -> dict[str, Converter]:
    return {name: c for name, c in family.converters.items() if isinstance(c, Converter) and c.from_xlm is not None}


def hf_converter_for(family: Family, config: Any) -> Converter:
    """The family's HF transformers layout that can hold `config`, or an ExportError saying why none can."""
    candidates = {name: c for name, c in _converters(family).items() if c.hf}
    if not candidates:
        others = sorted(_converters(family))
        raise ExportError(f"family {family.name!r} has no HF transformers layout; export with format='xlm'"
                          + (f" or one of its own layouts {others}" if others else ""))
    reasons = []
    for name, converter in candidates.items():
        problems = converter.export_problems(config) if converter.export_problems else []
        if not problems:
            return converter
        reasons.append(f"{name}: {'; '.join(problems)}")
    raise ExportError(f"no HF transformers layout holds this {family.name} config — " + " | ".join(reasons))


def _arch_of(family: Family, config: Any) -> str | None:
    for name in family.archs.names():
        if family.archs.get(name) == config:
            return name
    return None


def check_export_dir(out_dir: Path, *, overwrite: bool) -> None:
    """Refuses a target that is a file, or a directory already holding files unless `overwrite`: an export
    never replaces a model, a config or notes that the user did not name."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} is a file; export writes a directory, so name a new or empty one")
    present = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if present and not overwrite:
        raise ExportError(f"{out_dir} already holds {listing(present, limit=4)}; name a new or empty directory, "
                          f"or pass overwrite=True (xlm convert: --overwrite) to replace the files the export "
                          f"writes and keep the rest")


def _write_files(out_dir: Path, files: Mapping[str, Any]) -> None:
    """Writes every file into a fresh staging dir beside `out_dir`, then moves them in together."""
    staging = new_temp_dir(out_dir)
    out_dir.mkdir(exist_ok=True)
    try:
        for name, write in files.items():
            write(staging / name)
        for name in files:
            (staging / name).replace(out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _dedupe_shared(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keeps the first key of each group sharing one storage (tied weights, as HF saves them); the rest
    are re-tied by the loader. Values are contiguous CPU copies."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    out = {}
    for key, tensor in state.items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if ident in seen and tensor.numel():
            continue
        seen.add(ident)
        out[key] = tensor.detach().to("cpu").contiguous().clone()
    return out


def _hf_tokenizer_files(tokenizer: Any) -> dict[str, Any]:
    spec = tokenizer.spec()
    if not isinstance(spec, Mapping) or spec.get("kind") != "hf":
        raise ExportError(f"format='hf' writes tokenizers as an HF tokenizer.json; {type(tokenizer).__name__} is not "
                          f"one. Export without tokenizer=, or use format='xlm' (which keeps any xlm tokenizer)")
    roles = dict(spec.get("roles") or {})
    names = {"pad": "pad_token", "cls": "cls_token", "mask": "mask_token", "eos": "eos_token", "bos": "bos_token",
             "sep": "sep_token", "unk": "unk_token"}
    config = {"tokenizer_class": "PreTrainedTokenizerFast",
              **{names[role]: token for role, token in roles.items() if role in names}}
    return {"tokenizer.json": lambda p: p.write_text(spec["tokenizer_json"], encoding="utf-8"),
            "tokenizer_config.json": lambda p: p.write_text(json.dumps(config, indent=2) + "\n")}


def export(model: torch.nn.Module, out_dir: str | Path, *, format: str = "xlm", tokenizer: Any = None,
           arch: str | None = None, sampler_config: Any = None, task: str | None = None,
           train_config: Mapping[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Writes `model` to `out_dir` and returns it.

    format="xlm": model.safetensors + config.json (+ metrics.json), the run-dir layout `xlm.load_model` reads;
        `tokenizer` (any xlm tokenizer) and `sampler_config` (default: the family's defaults) are stored in
        config.json; `arch` names it (default: the registered arch whose config equals the model's, if any);
        `task` and `train_config` (an xlm run's) let `xlm eval` score the export on the run's task.
    format="hf": HF transformers config.json + model.safetensors (+ tokenizer.json for an HF tokenizer), for
        `AutoModelForCausalLM` / `AutoModelForMaskedLM.from_pretrained(out_dir)`.
    format=<converter name> (e.g. "hf_llama", "mdlm_reference"): that layout of the model's family.
    `out_dir` must be new or empty unless `overwrite`, which replaces the files written and keeps the others.
    """
    out_dir = Path(out_dir)
    check_export_dir(out_dir, overwrite=overwrite)
    family = family_of_model(model)
    config = model.config  # type: ignore[union-attr]
    if format == "xlm":
        from xlm.run_dir import write_run_dir

        write_run_dir(out_dir, model=model, family=family.name, arch=arch or _arch_of(family, config),
                      model_config=config, sampler_config=sampler_config or family.sampler_config_class(),
                      tokenizer=tokenizer, task=task, train_config=train_config, metrics={})
        return out_dir
    if format == "hf":
        converter = hf_converter_for(family, config)
    else:
        converters = _converters(family)
        if format not in converters:
            raise ExportError(f"unknown export format {format!r} for family {family.name!r}; choose 'xlm', 'hf'"
                              + (f" or one of {sorted(converters)}" if converters else ""))
        converter = converters[format]
        problems = converter.export_problems(config) if converter.export_problems else []
        if problems:
            raise ExportError(f"the {format} layout cannot hold this {family.name} config: {'; '.join(problems)}")
    try:
        converted = converter.from_xlm(model.state_dict(), config)  # type: ignore[misc]
    except ConversionError as err:
        raise ExportError(f"cannot export to {converter.name}: {err}") from None
    state = _dedupe_shared(converted.state)
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    hf_config = dict(converted.config)
    if len(dtypes) == 1:
        hf_config["torch_dtype"] = str(dtypes.pop()).removeprefix("torch.")
    files: dict[str, Any] = {
        "config.json": lambda p: p.write_text(json.dumps(hf_config, indent=2) + "\n"),
        "model.safetensors": lambda p: save_file(state, str(p), metadata={"format": "pt"}),
    }
    if tokenizer is not None:
        files.update(_hf_tokenizer_files(tokenizer))
    _write_files(out_dir, files)
    return out_dir

