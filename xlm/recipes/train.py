"""python -m xlm.recipes.train --arch ARCH --task TASK [--output-dir DIR] [key=value ...]

Trains one model and leaves a run dir that `xlm.load_model(DIR)` reads. Rerunning the same
command continues from the last checkpoint. Under torchrun it trains data-parallel.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from collections.abc import Sequence

import xlm  # noqa: F401  (registers the core families)
from xlm.data.task import Task, build_task
from xlm.errors import reports_user_errors
from xlm.plugins import load_external_models
from xlm.registry import families

from .config import ConfigError, TrainRecipeConfig, build_config, config_to_yaml
from .distributed import DistEnv, exit_worker, init_distributed, shutdown
from .trainer import NonFiniteLossError, Trainer, TrainingInterrupted


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="xlm train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True, help="an arch name (see `xlm models`), e.g. arlm_star")
    p.add_argument("--task", default="star_easy", help="star_easy | star_medium | star_hard | sort | text")
    p.add_argument("--output-dir", default=None, help="run dir (default runs/<arch>_<task>)")
    p.add_argument("--experiment", default=None, help="a preset from configs/experiment/, e.g. debug")
    p.add_argument("--dump-config", action="store_true", help="print the composed config and exit")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=3e-4 trainer.max_steps=200")
    return p.parse_intermixed_args(argv)


def resolve_config(args: argparse.Namespace) -> TrainRecipeConfig:
    load_external_models()  # families declared since `import xlm` (e.g. after a chdir)
    family = families.get_by_arch(args.arch)
    output_dir = args.output_dir or f"runs/{args.arch}_{args.task}"
    config = build_config(family=family, arch=args.arch, task=args.task, output_dir=output_dir,
                          experiment=args.experiment, overrides=args.overrides)
    return config


def fit_model_to_task(config: TrainRecipeConfig, task: Task, overrides: Sequence[str]) -> TrainRecipeConfig:
    """The task's tokenizer fixes the vocabulary, its longest target the generation budget
    (block-filling samplers train on that block size too); the context must hold its longest row."""
    vocab_size, max_seq_len = task.tokenizer.vocab_size, task.max_seq_len
    sampler = config.sampler
    if not any(o.startswith("sampler.max_new_tokens=") for o in overrides):
        sampler = replace(sampler, max_new_tokens=task.max_new_tokens)
    model = config.model
    if not any(o.startswith("model.vocab_size=") for o in overrides):
        model = replace(model, vocab_size=vocab_size)
    elif model.vocab_size < vocab_size:
        raise ConfigError(f"model.vocab_size={model.vocab_size} is smaller than the task tokenizer's "
                          f"{vocab_size} words")
    if getattr(model, "max_seq_len", max_seq_len) < max_seq_len:
        raise ConfigError(f"model.max_seq_len={model.max_seq_len} is shorter than the task's longest "
                          f"row ({max_seq_len} tokens); set model.max_seq_len={max_seq_len} or more")
    return replace(config, model=model, sampler=sampler)


@reports_user_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = resolve_config(args)
    task = build_task(config.task)
    config = fit_model_to_task(config, task, args.overrides)
    if args.dump_config:
        print(config_to_yaml(config), end="")
        return 0
    env = init_distributed(config.trainer.device)
    code = _train(config, task, env)
    if env.enabled:
        exit_worker(code)
    return code


def _train(config: TrainRecipeConfig, task: Task, env: DistEnv) -> int:
    try:
        summary = Trainer(config, families.get_by_arch(config.arch), task, env).run()
    except TrainingInterrupted as stop:
        if env.is_main:
            print(stop, file=sys.stderr)
        return 128 + stop.signum
    except NonFiniteLossError as err:
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
