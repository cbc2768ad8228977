"""python -m xlm.recipes.evaluate --model NAME_OR_DIR [--checkpoint step_N|last] [--task TASK] [--split test]
[--output F.json] [sampler.key=value ...] [task.key=value ...]

Scores a trained model on a whole split: loss (for ILM also `nll_bound`, nats per token), on text
a perplexity (a bound for MDLM and ILM, said so), and for seq2seq tasks every prediction metric
(star: exact_match, token_accuracy, path_valid, branch_correct). Prints a table and writes JSON.
The task's settings are those the model was trained with; `task.key=value` changes one (e.g.
task.data_files=held_out.txt: another corpus, read with the model's tokenizer). A checkpoint of another
layout (an HF GPT-2 or Llama dir) is scored on text, read with its own tokenizer:
`--task text task.data_files=FILE`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import asdict, replace
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from xlm.data.task import Task, TaskConfig
from xlm.data.tasks import build_task, reads_with_model_tokenizer, saved_task_config, task_config
from xlm.errors import InvalidValueError, reports_user_errors
from xlm.io import replace_file
from xlm.recipes.distributed import resolve_device
from xlm.recipes.evaluation import evaluate_loss, evaluate_predictions

from .config import override_task, parsed_override
from .model_source import CommandModel, load_for_command, task_settings_from_origin


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="xlm eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="a card name, run dir or export dir, or an HF model dir (with --task text)")
    p.add_argument("--checkpoint", default=None,
                   help="step_N or last: that checkpoint of the run (finished or not) instead of its final model")
    p.add_argument("--task", default=None, help="default: the task the model was trained on")
    p.add_argument("--split", default="test", help="train | validation | test")
    p.add_argument("--output", default=None,
                   help="JSON file for the metrics (default <run dir>/eval_<task>_<split>[_step_N][_firstN].json, "
                        "for a card eval_<card>_<task>_<split>[_firstN].json here)")
    p.add_argument("--predictions", default=None, help="JSONL file for one record per example")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--limit", type=int, default=None,
                   help="only the first N examples (the default --output then ends _firstN, so a full split's "
                        "file is not replaced)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0, help="for sampling strategies and the Monte-Carlo losses")
    p.add_argument("--loss-samples", type=int, default=1,
                   help="passes over the split, averaged, for the losses that are Monte-Carlo estimates (MDLM's "
                        "noise levels, ILM's insertion orders, MLM's masks); ARLM's is exact in one")
    p.add_argument("overrides", nargs="*", metavar="sampler.KEY=VALUE | task.KEY=VALUE",
                   help="sampler and task settings, e.g. sampler.strategy=sample task.data_files=held_out.txt")
    return p.parse_intermixed_args(argv)


def _parse_sampler_overrides(items: Sequence[str], *, expected: str = "sampler.KEY=VALUE") -> dict[str, object]:
    from omegaconf import OmegaConf

    out: dict[str, object] = {}
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key.startswith("sampler."):
            raise InvalidValueError(f"expected {expected}, got {item!r}")
        out.update(OmegaConf.to_container(parsed_override(item))["sampler"])  # type: ignore[index]
    return out


#: What each family's loss is, so a table never passes a bound off as a likelihood.
LOSS_MEANING = {
    "arlm": "loss: NLL in nats per target token",
    "mlm": "loss: cross-entropy in nats per masked token (not a likelihood of the sequence)",
    "mdlm": "loss: NELBO in nats per token, an upper bound on the NLL; perplexity is a bound",
    "ilm": "loss: insertion cross-entropy + stop loss, per sequence (not per token); nll_bound: an upper "
           "bound on the NLL in nats per token (ELBO over insertion orders); perplexity is a bound",
}


def _task_config(run: Mapping[str, Any], name: str | None, where: str, run_dir: Path | None,
                 overrides: Sequence[str]) -> TaskConfig:
    """The run's own task settings (data files, tokenizer, block size) when evaluating on its task, with the
    command line's `task.key=value` items over them."""
    saved = task_settings_from_origin(dict((run.get("train_config") or {}).get("task") or {}), run_dir)
    if name is None or name == saved.get("name", run["task"]):
        if run["task"] is None:
            raise InvalidValueError(f"{where} records no task it was trained on; name one with --task")
        config = saved_task_config(saved, f"{where}: train_config.task") if saved else task_config(run["task"])
    else:
        config = task_config(name)
    return override_task(config, overrides)


def _as_settings(items: Sequence[str]) -> dict[str, str]:
    """`task.data_files=a.txt` -> {"data_files": "a.txt"}: the part of an output file's name that says so."""
    return dict(item.removeprefix("task.").partition("=")[::2] for item in items)


def _settings_suffix(overrides: Mapping[str, object]) -> str:
    """`_strategy=sample_temperature=0.5` for sampler overrides: a file name that says what differs."""
    return "".join(f"_{key}={re.sub(r'[^A-Za-z0-9_.+-]', '-', str(value))}" for key, value in overrides.items())


def _output_file(args: argparse.Namespace, loaded: CommandModel, task: str, scored: int, split_size: int,
                 overrides: Mapping[str, object]) -> Path:
    """A part of a split, or other sampler settings than the model's, get their own name:
    scripts/ship_checkpoint.py reads eval_<task>_test.json as the full split's numbers with the model's settings."""
    if args.output:
        return Path(args.output)
    part = f"_first{scored}" if scored < split_size else ""
    part += _settings_suffix(overrides)
    if loaded.run_dir is not None:
        step = f"_{loaded.checkpoint}" if loaded.checkpoint else ""
        return loaded.run_dir / f"eval_{task}_{args.split}{step}{part}.json"
    return Path(f"eval_{Path(args.model).name}_{task}_{args.split}{part}.json")


def _fit_sampler(sampler: Any, task: Task, overrides: Mapping[str, object]) -> Any:
    """A model scored on a task with longer targets than its own (star_easy's on star_medium) generates as many
    tokens as the task's longest (a block-filling family's block must hold it), unless the command line sets
    sampler.max_new_tokens; the model's own block otherwise, as it was trained."""
    if "max_new_tokens" in overrides or sampler.max_new_tokens >= task.max_new_tokens:
        return sampler
    return replace(sampler, max_new_tokens=task.max_new_tokens)


def _check_writable(option: str, value: str | None) -> None:
    if value is not None and Path(value).is_dir():
        raise InvalidValueError(f"{option} {value} is a directory; give a file name, e.g. {Path(value) / 'eval.json'}")


@reports_user_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for option, value in (("--loss-samples", args.loss_samples), ("--batch-size", args.batch_size),
                          ("--limit", 1 if args.limit is None else args.limit)):
        if value < 1:
            raise InvalidValueError(f"{option} must be >= 1, got {value}")
    _check_writable("--output", args.output)
    _check_writable("--predictions", args.predictions)
    device = resolve_device(args.device, option="--device")
    task_items = [item for item in args.overrides if item.startswith("task.")]
    overrides = _parse_sampler_overrides([item for item in args.overrides if not item.startswith("task.")],
                                         expected="sampler.KEY=VALUE or task.KEY=VALUE")
    loaded = load_for_command(args.model, checkpoint=args.checkpoint, device=device, sampling=overrides)
    run = loaded.run_config
    if run is None:  # another layout (an HF dir, ...): its own tokenizer reads the text the user names
        if args.task is None:
            raise InvalidValueError(f"{args.model} is a checkpoint of another layout, trained on no xlm task; name "
                                    f"text to score it on with --task text task.data_files=FILE (read with its own "
                                    f"tokenizer)")
        task = build_task(override_task(task_config(args.task), task_items), tokenizer=loaded.tokenizer)
    else:
        config = _task_config(run, args.task, loaded.label, loaded.run_dir, task_items)
        # text whose tokenizer would be trained on it is read with the model's (another corpus: not one trained there)
        own = loaded.tokenizer if reads_with_model_tokenizer(config) else None
        task = build_task(config, tokenizer=own)
        if task.tokenizer.spec() != run["tokenizer"]:
            raise InvalidValueError(f"task {task.name!r} uses a different vocabulary from the model's (trained on "
                                    f"{run['task']!r}); evaluate on a task with the same tokenizer (for text: "
                                    f"task.tokenizer=DIR, a finished run or export dir of the model)")
    sampler_config = _fit_sampler(loaded.sampler_config, task, overrides)
    unit = loaded.family.unit_factory(loaded.model, task.tokenizer, sampler_config)
    ds = task.dataset(args.split)
    split_size = len(ds)
    if args.limit is not None:
        ds = ds.select(range(min(args.limit, split_size)))
    torch.manual_seed(args.seed)  # a log gets this line where a terminal gets progress bars
    print(f"scoring {loaded.label} on {task.name} / {args.split} ({len(ds)} examples)", file=sys.stderr, flush=True)
    draws = [evaluate_loss(unit, ds, batch_size=args.batch_size, device=device, progress=True)
             for _ in range(args.loss_samples)]  # each pass draws fresh noise levels / drop patterns
    metrics = {k: sum(d[k] for d in draws) / len(draws) for k in ("loss", "nll_bound") if k in draws[0]}
    note = LOSS_MEANING.get(loaded.family.name, "loss: nats per token")
    if not task.is_seq2seq:  # from the per-token NLL, or the bound on it where the loss is not per token
        metrics["perplexity"] = math.exp(min(metrics.get("nll_bound", metrics["loss"]), 50.0))
    records: list[dict] = []
    if task.is_seq2seq:
        means, records = evaluate_predictions(unit, task, ds, batch_size=args.batch_size, device=device,
                                              progress=True)
        metrics.update(means)
    checkpoint = {"checkpoint": loaded.checkpoint} if loaded.checkpoint else {}
    result = {"model": args.model, **checkpoint, "task": task.name, "split": args.split, "num_examples": len(ds),
              **metrics, "loss_samples": args.loss_samples, "loss_meaning": note, "seed": args.seed,
              "sampler": asdict(sampler_config), **({"sampler_overrides": overrides} if overrides else {}),
              **({"task_overrides": task_items} if task_items else {})}
    output = _output_file(args, loaded, task.name, len(ds), split_size, {**overrides, **_as_settings(task_items)})
    output.parent.mkdir(parents=True, exist_ok=True)
    replace_file(output, json.dumps(result, indent=2) + "\n")  # Ctrl-C or a second eval: never half a file
    if args.predictions:
        predictions = Path(args.predictions)
        predictions.parent.mkdir(parents=True, exist_ok=True)
        replace_file(predictions, "".join(json.dumps(r) + "\n" for r in records))
    width = max(len(k) for k in metrics)
    print(f"{task.name} / {args.split} ({len(ds)} examples), {loaded.label}")
    for k, v in metrics.items():
        print(f"  {k:<{width}}  {v:.4f}")
    print(f"  ({note})")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
