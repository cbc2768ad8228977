"""python -m xlm.recipes.train --arch ARCH --task TASK [--output-dir DIR] [key=value ...]

Trains one model and leaves a run dir that `xlm.load_model(DIR)` reads. Rerunning the same
command continues from the last checkpoint; settings that change the result must match the
checkpoint's (trainer.resume_changes allows a change, recorded in DIR/history.jsonl). One run
at a time writes a run dir: a second one is refused. Under torchrun it trains data-parallel.
init_from=SOURCE (a card name, a run or export dir, an HF dir) starts from that model's weights.

Ctrl-C (or SIGTERM) stops after the current step (or micro-batch, or evaluation batch) and saves a
checkpoint, exit 130 (143); a second one stops at once, keeping the checkpoints already saved.
DIR/run.json records the command, versions, host, device and each segment's start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import fields, replace
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import datasets
import torch

from xlm.data.task import Task, TaskConfig
from xlm.data.tasks import build_task, reads_with_model_tokenizer
from xlm.data.tokenizers import Tokenizer
from xlm.errors import InvalidValueError, XlmUserError, listing, reports_user_errors
from xlm.registry import families, get_task, list_tasks

from .checkpoint import checkpoint_dirs
from .config import ComposedConfig, ConfigError, TrainRecipeConfig, build_config, config_to_yaml
from .distributed import DistEnv, exit_worker, init_distributed, shutdown
from .host import HostLoad, oversubscription_warning, torch_threads
from .init_from import InitSource, load_init_source, source_network
from .interrupts import signal_name
from .model_source import CHECKPOINTS
from .run_history import HISTORY_FILE
from .run_lock import LOCK_FILE, run_dir_lock
from .run_record import RUN_RECORD
from .trainer import Trainer, TrainingInterrupted, UnstableTrainingError


DEFAULT_TASK = "star_easy"


def tasks_help() -> str:
    """The registered tasks, one a line, for --help."""
    names = list_tasks()
    width = max(map(len, names), default=0)
    lines = [f"  {name:<{width}}  {get_task(name).description}".rstrip() for name in names]
    return "tasks (--task NAME; task.KEY=VALUE sets a field of its config):\n" + "\n".join(lines)


class _TrainParser(argparse.ArgumentParser):
    def format_help(self) -> str:
        """The task list asks every registry (plugins included) for its names: only when help is shown."""
        self.epilog = tasks_help()
        return super().format_help()

    def error(self, message: str) -> NoReturn:
        """An unknown `--flag` that names a config setting (`--seed 1`, `--max-steps 5`) is told its override."""
        if message.startswith("unrecognized arguments:"):
            hints = [f"{flag} -> {key}=..." for flag in message.split(":", 1)[1].split()
                     if flag.startswith("--") and (key := _setting_of_flag(flag))]
            if hints:
                message += "; config settings are key=value overrides: " + ", ".join(hints)
        super().error(message)


def _setting_of_flag(flag: str) -> str | None:
    """The config key a `--flag` spells (`--seed` -> seed, `--max-steps` -> trainer.max_steps), if any."""
    name = flag.lstrip("-").split("=", 1)[0].replace("-", "_")
    if name in {f.name for f in fields(TrainRecipeConfig)}:
        return name
    for section in ("trainer", "optim", "data"):
        section_type = TrainRecipeConfig.__dataclass_fields__[section].default_factory  # type: ignore[misc]
        if name in {f.name for f in fields(section_type)}:
            return f"{section}.{name}"
    return None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = _TrainParser(prog="xlm train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True, help="an arch name (see `xlm models`), e.g. arlm_star")
    p.add_argument("--task", default=None, help=f"a registered task (listed below); default {DEFAULT_TASK}")
    p.add_argument("--output-dir", default=None,
                   help="run dir (default runs/<arch>_<task>, a word they share written once: runs/arlm_star_easy)")
    p.add_argument("--experiment", default=None, help="a preset from configs/experiment/, e.g. debug")
    p.add_argument("--dump-config", action="store_true", help="print the composed config and exit")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=3e-4 trainer.max_steps=200")
    args = p.parse_intermixed_args(argv)
    args.task_given = args.task is not None
    args.task = args.task or DEFAULT_TASK
    return args


def default_output_dir(arch: str, task: str) -> str:
    """runs/<arch>_<task>, with the words that end the arch and start the task written once:
    arlm_star + star_easy -> runs/arlm_star_easy, mdlm_base + star_easy -> runs/mdlm_base_star_easy."""
    arch_words, task_words = arch.split("_"), task.split("_")
    shared = max((k for k in range(1, min(len(arch_words), len(task_words)) + 1)
                  if arch_words[-k:] == task_words[:k]), default=0)
    return "runs/" + "_".join(arch_words + task_words[shared:])


def resolve_config(args: argparse.Namespace) -> ComposedConfig:
    family = families.get_by_arch(args.arch)  # a plugin's arch is discovered here (again after a chdir)
    get_task(args.task)  # an unknown name is an error naming the close matches, before any YAML is read
    output_dir = args.output_dir or default_output_dir(args.arch, args.task)
    return build_config(family=family, arch=args.arch, task=args.task, output_dir=output_dir,
                        experiment=args.experiment, overrides=args.overrides)


def refuse_file(option: str, path: Path) -> None:
    """A directory option that names a file is one error, not a traceback from mkdir."""
    if path.exists() and not path.is_dir():
        raise InvalidValueError(f"{option} {path} is a file, not a directory; give a directory")


COMPARE_SETTINGS = "compare_run.json"  # xlm compare's record, in each run dir, of what it trains and scores
RUN_MARKERS = (LOCK_FILE, RUN_RECORD, HISTORY_FILE, CHECKPOINTS, COMPARE_SETTINGS)  # the first files of a run


def refuse_foreign_output_dir(path: Path, markers: Sequence[str] = RUN_MARKERS,
                              kind: str = "a training run's directory") -> None:
    """An --output-dir holding files but none of `markers` (what the command itself writes first) is refused:
    the command would mix its files with them and write over those of the same name (an export's model)."""
    if not path.is_dir() or any((path / marker).exists() for marker in markers):
        return
    present = sorted(p.name for p in path.iterdir())
    if present:
        raise InvalidValueError(f"--output-dir {path} holds {listing(present, limit=4)} and is not {kind}; choose "
                                f"a new or empty directory")


def fit_model_to_task(composed: ComposedConfig, task: Task, *, network: Any = None) -> TrainRecipeConfig:
    """The task's tokenizer fixes the vocabulary, its longest target the generation budget
    (block-filling samplers train on that block size too), and its kind the prompt format of a
    sampler that has one (seq2seq rows, or text to continue), unless a config layer pinned them;
    the context must hold the task's longest row. `network`, a model config to train as it is
    (init_from's), replaces the composed one."""
    config, pinned = composed.config, composed.pinned
    vocab_size, max_seq_len = task.tokenizer.vocab_size, task.max_seq_len
    sampler = config.sampler
    if "sampler.max_new_tokens" not in pinned:
        sampler = replace(sampler, max_new_tokens=task.max_new_tokens)
    if hasattr(sampler, "prompt_format") and "sampler.prompt_format" not in pinned:
        sampler = replace(sampler, prompt_format="seq2seq" if task.is_seq2seq else "continuation")
    if network is not None:  # its own vocabulary (a padded one too) and context, checked by source_network
        return replace(config, model=network, sampler=sampler)
    model = config.model
    if "model.vocab_size" not in pinned:
        model = replace(model, vocab_size=vocab_size)
    elif model.vocab_size < vocab_size:
        raise ConfigError(f"model.vocab_size={model.vocab_size} (from {pinned['model.vocab_size']}) is smaller "
                          f"than the task tokenizer's {vocab_size} words")
    if getattr(model, "max_seq_len", max_seq_len) < max_seq_len:
        raise ConfigError(f"model.max_seq_len={model.max_seq_len} is shorter than the task's longest "
                          f"row ({max_seq_len} tokens); set model.max_seq_len={max_seq_len} or more")
    return replace(config, model=model, sampler=sampler)


@reports_user_errors
def main(argv: Sequence[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    if not sys.stderr.isatty():  # a log file: no progress bars of `datasets` (their \r) while the task is built
        datasets.disable_progress_bars()
    try:
        args = parse_args(command)
        composed = resolve_config(args)
        refuse_file("--output-dir", Path(composed.config.output_dir))
        if not args.dump_config:
            refuse_foreign_output_dir(Path(composed.config.output_dir))
        if not args.task_given and not args.dump_config and os.environ.get("RANK", "0") == "0":
            print(f"note: no --task given: training on {DEFAULT_TASK}, the default", file=sys.stderr, flush=True)
        source = (load_init_source(composed.config.init_from, families.get_by_arch(args.arch), args.arch)
                  if composed.config.init_from is not None else None)
        task = build_task(composed.config.task, tokenizer=_tokenizer_of(source, composed.config.task))
        config = fit_model_to_task(composed, task,
                                   network=None if source is None else source_network(source, composed, task))
    except KeyboardInterrupt:
        print("stopped by Ctrl-C before training started; nothing was written", file=sys.stderr)
        return 128 + signal.SIGINT
    if args.dump_config:
        print(config_to_yaml(config), end="")
        return 0
    env = init_distributed(config.trainer.device)
    code = _train(config, task, env, command, source)
    if env.enabled:
        exit_worker(code)
    return code


def _warn_if_oversubscribed(config: TrainRecipeConfig, env: DistEnv) -> None:
    """On a CPU, one line when this host's processes of the run have more threads than free cores."""
    if env.device.type != "cpu" or env.local_rank != 0:
        return
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if warning := oversubscription_warning(torch.get_num_threads() * local_ranks, HostLoad.here()):
        print(warning + (f" ({local_ranks} processes)" if local_ranks > 1 else ""), file=sys.stderr, flush=True)


def _stopped_at_once(output_dir: Path, stop: KeyboardInterrupt) -> tuple[str, int]:
    """The message and exit code for a second stop signal (or a Ctrl-C before the trainer listened):
    what is left to resume from."""
    saved = checkpoint_dirs(output_dir / "checkpoints")
    left = (f"the newest checkpoint, {saved[-1][1]}, is where the same command resumes" if saved else
            "no checkpoint was saved yet: the same command starts over")
    if (signum := getattr(stop, "signum", None)) is not None:  # interrupts.stop_now
        return f"stopped at once by a second {signal_name(signum)}; {left}", 128 + signum
    return f"stopped by Ctrl-C before training started; {left}", 128 + signal.SIGINT


def _tokenizer_of(source: InitSource | None, task: TaskConfig) -> Tokenizer | None:
    """The tokenizer a fine-tuning run reads its text with: the source model's, where the task would train one."""
    return source.tokenizer if source is not None and reads_with_model_tokenizer(task) else None


def _train(config: TrainRecipeConfig, task: Task, env: DistEnv, command: Sequence[str],
           source: InitSource | None) -> int:
    try:
        with torch_threads(config.trainer.num_threads), \
                run_dir_lock(Path(config.output_dir), env):  # before the run dir is read or written
            _warn_if_oversubscribed(config, env)
            summary = Trainer(config, families.get_by_arch(config.arch), task, env, command=command,
                              init=source).run()
    except TrainingInterrupted as stop:
        if env.is_main:
            print(stop, file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt as stop:  # a second signal (stop_now), or a Ctrl-C before the trainer listens
        message, code = _stopped_at_once(Path(config.output_dir), stop)
        if env.is_main:
            print(message, file=sys.stderr)
        return code
    except XlmUserError as err:  # found once the model, data or a checkpoint is at hand; returned, so that
        print(f"error: {err}", file=sys.stderr)  # a torchrun worker still leaves through exit_worker
        return 2
    except UnstableTrainingError as err:  # a NaN/Inf or diverged loss; the checkpoints are as they were
        print(f"error: {err}", file=sys.stderr)
        return 3
    finally:
        shutdown(env)
    if env.is_main:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}))
        print(f"run dir: {config.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
