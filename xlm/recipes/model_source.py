"""The one rule by which every command (eval, generate, convert; compare through eval; train's init_from) finds
the model it is given: a card name, a run or export dir, or a checkpoint in a layout some family's converter
reads, all through `xlm.assets.loading.resolve_source`; or, with `--checkpoint step_N | last` (or by its path,
RUN/checkpoints/step_000000500), a checkpoint of a run, finished or not: its weights only (the EMA's when it
kept them), built with the config the run recorded in it. A run dir that has not finished is said to be one,
with the command that resumes it and its checkpoints."""

from __future__ import annotations

import glob
import json
import re
import shlex
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from xlm.assets.generator import Generator
from xlm.assets.loading import card_or_path, resolve_source, sampler_config_for, source_model, source_tokenizer
from xlm.data.tasks import build_task, saved_task_config
from xlm.data.tokenizers import Tokenizer
from xlm.errors import InvalidValueError
from xlm.registry import Family, families, get_family
from xlm.run_dir import (RunDirError, build_dataclass, is_run_dir, load_run_tokenizer, load_state_strict,
                         read_run_config)

from .checkpoint import (CHECKPOINT_RE, SHARDED_SUBDIR, CheckpointError, checkpoint_dirs, is_readable_checkpoint,
                         is_sharded_checkpoint, load_trainer_state)
from .run_history import HISTORY_FILE
from .run_lock import live_holder
from .run_record import started_in

CHECKPOINTS = "checkpoints"  # the run dir's subdir of step_N/ checkpoints (xlm.recipes.checkpoint)


class UnfinishedRunError(RunDirError):
    """A run dir without its final model; the message says how to resume it or which checkpoint to use."""


@dataclass(frozen=True, kw_only=True)
class CommandModel:
    """A model ready for a command, and what the command needs to know about it."""

    model: torch.nn.Module
    tokenizer: Tokenizer
    family: Family
    sampler_config: Any
    run_config: Mapping[str, Any] | None  # the xlm run's config.json (a checkpoint's: rebuilt from what it keeps);
    #                                       None for a checkpoint in another layout
    label: str  # what was loaded, for a command's output: "runs/x", "runs/x, checkpoint step_4 (EMA weights)"
    run_dir: Path | None  # the run or export dir given by path, where results about it go; None for a card
    checkpoint: str | None = None  # "step_N" when a checkpoint of the run was loaded

    def generator(self) -> Generator:
        return Generator(self.model, self.tokenizer, self.family, self.sampler_config)


def load_for_command(name_or_path: str, *, checkpoint: str | None = None, device: torch.device | str | None = None,
                     sampling: Mapping[str, Any] | None = None) -> CommandModel:
    """The model `name_or_path` names (its `checkpoint` of a run when given), with `sampling` over its sampler
    settings."""
    sampling = dict(sampling or {})
    if checkpoint is None:
        name_or_path, checkpoint = split_checkpoint_path(name_or_path)
    if checkpoint is not None:
        return _load_checkpoint(_run_with_checkpoints(name_or_path), checkpoint, device, sampling)
    refuse_unfinished_run(name_or_path)
    source = resolve_source(name_or_path)
    family = get_family(source.family)
    by_path = source.card is None
    return CommandModel(model=source_model(source, device=device), tokenizer=source_tokenizer(source), family=family,
                        sampler_config=sampler_config_for(source, family, sampling),
                        run_config=read_run_config(source.path) if source.is_run_dir else None,
                        label=str(name_or_path) if by_path else f"card {source.card.name}",  # type: ignore[union-attr]
                        run_dir=source.path if by_path and source.is_run_dir else None)


def task_settings_from_origin(saved: dict[str, Any], run_dir: Path | None) -> dict[str, Any]:
    """A run's task settings with each relative path (data files, tokenizer, a local dataset dir) that is not
    found from here taken from the directory the run was started in, said in a note."""
    origin = started_in(run_dir) if run_dir is not None else None
    if origin is None:
        return saved
    def rebased(path: str) -> str:
        lost = not Path(path).expanduser().is_absolute() and not glob.glob(path)
        return str(origin / path) if lost and glob.glob(str(origin / path)) else path

    out = dict(saved)
    for key in ("data_files", "tokenizer", "dataset"):
        if not isinstance(out.get(key), str):
            continue
        parts = [p.strip() for p in out[key].split(",")] if key == "data_files" else [out[key]]
        moved = [rebased(p) for p in parts]
        if moved != parts:
            out[key] = ",".join(moved)
            print(f"note: task.{key} {saved[key]!r} is not found here; reading it from where the run was started: "
                  f"{out[key]}", file=sys.stderr, flush=True)
    return out


def split_checkpoint_path(name_or_path: str) -> tuple[str, str | None]:
    """A path to one checkpoint of a run (runs/x/checkpoints/step_000000500) is that run with --checkpoint
    step_500; anything else is itself."""
    path = Path(name_or_path).expanduser()
    match = CHECKPOINT_RE.match(path.name)
    if match is None or path.parent.name != CHECKPOINTS or not path.is_dir():
        return name_or_path, None
    return str(path.parent.parent), f"step_{int(match.group(1))}"


def refuse_unfinished_run(name_or_path: str | Path) -> None:
    """An UnfinishedRunError for a run dir whose training has not written its final model."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir() or (path / "model.safetensors").exists():
        return
    found = checkpoint_dirs(path / CHECKPOINTS)
    if not found and not (path / HISTORY_FILE).exists():
        return
    holder = live_holder(path)
    if holder is not None:
        wait = f"{path} is still training ({holder}): wait for it to finish"
        if not found:
            raise UnfinishedRunError(f"{wait}; it has saved no checkpoint yet")
        raise UnfinishedRunError(f"{wait}, or use --checkpoint step_N (available: {_available(found)})")
    resume = f"resume it with `{_resume_command(path)}`"
    if not found:
        raise UnfinishedRunError(f"{path} is a run that has not finished and has saved no checkpoint yet: {resume}")
    raise UnfinishedRunError(f"{path} is a run that has not finished: {resume} or use --checkpoint step_N "
                             f"(available: {_available(found)})")


def _resume_command(run: Path) -> str:
    """The command that started the run's last segment (history.jsonl), which continues it when run again."""
    lines = (run / HISTORY_FILE).read_text().splitlines() if (run / HISTORY_FILE).is_file() else []
    for line in reversed(lines):
        try:
            command = json.loads(line).get("command")
        except (json.JSONDecodeError, AttributeError):
            continue
        if command:
            return "xlm train " + shlex.join(command)
    return f"xlm train --arch ARCH --task TASK --output-dir {shlex.quote(str(run))} (the settings it was started with)"


def _available(found: list[tuple[int, Path]]) -> str:
    return ", ".join(f"step_{step}" for step, _ in found) + ", last"


def _run_with_checkpoints(name_or_path: str) -> Path:
    card, path = card_or_path(name_or_path)  # a path that is not there: "X does not exist"
    if card is not None:
        raise InvalidValueError(f"--checkpoint picks a checkpoint of a run dir, and {name_or_path!r} is a card; "
                                f"load the card without --checkpoint, or give the run dir")
    assert path is not None
    if not checkpoint_dirs(path / CHECKPOINTS):
        raise InvalidValueError(f"--checkpoint: {path} has no checkpoints (no {path / CHECKPOINTS}/step_N/); "
                                f"give a run dir with checkpoints, or leave --checkpoint out")
    return path


def pick_checkpoint(run: Path, name: str) -> tuple[int, Path]:
    """The checkpoint `name` ("step_N", or "last": the newest readable one) of `run`."""
    found = checkpoint_dirs(run / CHECKPOINTS)
    if name == "last":
        for step, path in reversed(found):
            if is_readable_checkpoint(path):
                return step, path
        raise RunDirError(f"--checkpoint last: none of {run / CHECKPOINTS}'s checkpoints is readable "
                          f"({_available(found).removesuffix(', last')}); each is truncated or damaged")
    match = re.fullmatch(r"step_(\d+)", name)
    if match is None:
        raise InvalidValueError(f"--checkpoint takes step_N or last, got {name!r}; available in {run}: "
                                f"{_available(found)}")
    for step, path in found:
        if step == int(match.group(1)):
            return step, path
    raise InvalidValueError(f"--checkpoint {name}: {run} has no such checkpoint; available: {_available(found)}")


def _load_checkpoint(run: Path, name: str, device: torch.device | str | None,
                     sampling: Mapping[str, Any]) -> CommandModel:
    step, path = pick_checkpoint(run, name)
    try:
        state = load_trainer_state(path)
    except CheckpointError as err:
        raise RunDirError(str(err)) from None
    finished = read_run_config(run) if is_run_dir(run) else None
    if state.get("config") is not None:
        config = json.loads(state["config"])
    elif finished is not None and finished.get("train_config"):
        config = finished["train_config"]
    else:
        raise RunDirError(f"{path} keeps no config (an earlier xlm wrote it) and {run} has no config.json to take it "
                          f"from; resume the run to its end, then load {run}")
    family = families.get_by_arch(config["arch"])
    model_config = build_dataclass(family.config_class, config["model"], f"{path} model config")
    model = family.factory(model_config, device=device)
    ema = bool(state.get("has_ema")) if is_sharded_checkpoint(path) else (path / "ema.safetensors").exists()
    load_state_strict(model, _weights(path, model, ema=ema), where=str(path))
    tokenizer = (load_run_tokenizer(run) if finished is not None
                 else build_task(saved_task_config(task_settings_from_origin(config["task"], run),
                                                   f"{path} task config")).tokenizer)
    sampler = build_dataclass(family.sampler_config_class, {**config["sampler"], **sampling},
                              f"{family.name} sampler settings", kind="sampler key")
    run_config = {"family": family.name, "arch": config["arch"], "task": config["task"]["name"],
                  "tokenizer": tokenizer.spec(), "model_config": config["model"], "sampler_config": config["sampler"],
                  "train_config": config}
    label = f"{run}, checkpoint step_{step} ({'EMA weights' if ema else 'weights, no EMA kept'})"
    return CommandModel(model=model.eval(), tokenizer=tokenizer, family=family, sampler_config=sampler,
                        run_config=run_config, label=label, run_dir=run, checkpoint=f"step_{step}")


def _weights(path: Path, model: torch.nn.Module, *, ema: bool) -> dict[str, torch.Tensor]:
    """The checkpoint's model (or EMA) weights: model.safetensors / ema.safetensors, or from its sharded
    torch.distributed.checkpoint files, read without a process group into `model`'s layout."""
    try:
        if not is_sharded_checkpoint(path):
            return load_file(path / ("ema.safetensors" if ema else "model.safetensors"))
        import torch.distributed.checkpoint as dcp

        key = "ema" if ema else "model"
        state = {key: {k: v.detach().clone() for k, v in model.state_dict().items()}}
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, checkpoint_id=str(path / SHARDED_SUBDIR))
        return state[key]
    except Exception as err:
        raise RunDirError(f"checkpoint {path} is unreadable ({type(err).__name__}: {str(err).splitlines()[0]}); it "
                          f"may be truncated or damaged: pick another with --checkpoint") from None
