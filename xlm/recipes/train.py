"""python -m xlm.recipes.train --arch ARCH --task TASK [--output-dir DIR] [key=value ...]

Trains one model and leaves a run dir that `xlm.load_model(DIR)` reads. Rerunning the same
command continues from the last checkpoint; settings that change the result must match the
checkpoint's (trainer.resume_changes allows a change, recorded in DIR/history.jsonl). One run
at a time writes a run dir: a second one is refused. Under torchrun it trains data-parallel.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from collections.abc import Sequence
from pathlib import Path

from xlm.data.task import Task
from xlm.data.tasks import build_task
from xlm.errors import InvalidValueError, XlmUserError, reports_user_errors
from xlm.registry import families, get_task, list_tasks

from .config import ComposedConfig, ConfigError, TrainRecipeConfig, build_config, config_to_yaml
from .distributed import DistEnv, exit_worker, init_distributed, shutdown
from .run_lock import run_dir_lock
from .trainer import Trainer, TrainingInterrupted, UnstableTrainingError


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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = _TrainParser(prog="xlm train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True, help="an arch name (see `xlm models`), e.g. arlm_star")
    p.add_argument("--task", default="star_easy", help="a registered task (listed below), e.g. star_easy")
    p.add_argument("--output-dir", default=None, help="run dir (default runs/<arch>_<task>)")
    p.add_argument("--experiment", default=None, help="a preset from configs/experiment/, e.g. debug")
    p.add_argument("--dump-config", action="store_true", help="print the composed config and exit")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=3e-4 trainer.max_steps=200")
    return p.parse_intermixed_args(argv)


def resolve_config(args: argparse.Namespace) -> ComposedConfig:
    family = families.get_by_arch(args.arch)  # a plugin's arch is discovered here (again after a chdir)
    get_task(args.task)  # an unknown name is an error naming the close matches, before any YAML is read
    output_dir = args.output_dir or f"runs/{args.arch}_{args.task}"
    return build_config(family=family, arch=args.arch, task=args.task, output_dir=output_dir,
                        experiment=args.experiment, overrides=args.overrides)


def refuse_file(option: str, path: Path) -> None:
    """A directory option that names a file is one error, not a traceback from mkdir."""
    if path.exists() and not path.is_dir():
        raise InvalidValueError(f"{option} {path} is a file, not a directory; give a directory")


def fit_model_to_task(composed: ComposedConfig, task: Task) -> TrainRecipeConfig:
    """The task's tokenizer fixes the vocabulary, its longest target the generation budget
    (block-filling samplers train on that block size too), and its kind the prompt format of a
    sampler that has one (seq2seq rows, or text to continue), unless a config layer pinned them;
    the context must hold the task's longest row."""
    config, pinned = composed.config, composed.pinned
    vocab_size, max_seq_len = task.tokenizer.vocab_size, task.max_seq_len
    sampler = config.sampler
    if "sampler.max_new_tokens" not in pinned:
        sampler = replace(sampler, max_new_tokens=task.max_new_tokens)
    if hasattr(sampler, "prompt_format") and "sampler.prompt_format" not in pinned:
        sampler = replace(sampler, prompt_format="seq2seq" if task.is_seq2seq else "continuation")
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
    args = parse_args(command)
    composed = resolve_config(args)
    refuse_file("--output-dir", Path(composed.config.output_dir))
    task = build_task(composed.config.task)
    config = fit_model_to_task(composed, task)
    if args.dump_config:
        print(config_to_yaml(config), end="")
        return 0
    env = init_distributed(config.trainer.device)
    code = _train(config, task, env, command)
    if env.enabled:
        exit_worker(code)
    return code


def _train(config: TrainRecipeConfig, task: Task, env: DistEnv, command: Sequence[str]) -> int:
    try:
        with run_dir_lock(Path(config.output_dir), env):  # before the run dir is read or written
            summary = Trainer(config, families.get_by_arch(config.arch), task, env, command=command).run()
    except TrainingInterrupted as stop:
        if env.is_main:
            print(stop, file=sys.stderr)
        return 128 + stop.signum
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
