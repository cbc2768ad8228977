"""python -m xlm.recipes.evaluate --model RUN_DIR --task TASK [--split test] [--output F.json]
[sampler.key=value ...]

Scores a trained model on a whole split: loss (for ILM also `nll_bound`, nats per token), on text
a perplexity (a bound for MDLM and ILM, said so), and for seq2seq tasks every prediction metric
(star: exact_match, token_accuracy, path_valid, branch_correct). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from collections.abc import Sequence

import torch

import xlm
from xlm.data.task import TaskConfig
from xlm.data.tasks import build_task, saved_task_config, task_config
from xlm.errors import InvalidValueError, reports_user_errors
from xlm.recipes.distributed import resolve_device
from xlm.recipes.evaluation import evaluate_loss, evaluate_predictions
from xlm.registry import get_family
from xlm.run_dir import load_run_sampler_config, read_run_config


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="xlm eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a run or export dir")
    p.add_argument("--task", default=None, help="default: the task the model was trained on")
    p.add_argument("--split", default="test", help="train | validation | test")
    p.add_argument("--output", default=None,
                   help="JSON file for the metrics (default <model>/eval_<task>_<split>.json)")
    p.add_argument("--predictions", default=None, help="JSONL file for one record per example")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--limit", type=int, default=None, help="only the first N examples")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0, help="for sampling strategies and the Monte-Carlo losses")
    p.add_argument("--loss-samples", type=int, default=1,
                   help="passes over the split, averaged, for the losses that are Monte-Carlo estimates (MDLM's "
                        "noise levels, ILM's insertion orders, MLM's masks); ARLM's is exact in one")
    p.add_argument("sampler", nargs="*", help="sampler overrides, e.g. sampler.strategy=sample sampler.top_p=0.9")
    return p.parse_intermixed_args(argv)


def _parse_sampler_overrides(items: Sequence[str]) -> dict[str, object]:
    from omegaconf import OmegaConf

    out: dict[str, object] = {}
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key.startswith("sampler."):
            raise InvalidValueError(f"expected sampler.KEY=VALUE, got {item!r}")
        out.update(OmegaConf.to_container(OmegaConf.from_dotlist([item]))["sampler"])  # type: ignore[index]
    return out


#: What each family's loss is, so a table never passes a bound off as a likelihood.
LOSS_MEANING = {
    "arlm": "loss: NLL in nats per target token",
    "mlm": "loss: cross-entropy in nats per masked token (not a likelihood of the sequence)",
    "mdlm": "loss: NELBO in nats per token, an upper bound on the NLL; perplexity is a bound",
    "ilm": "loss: insertion cross-entropy + stop loss, per sequence (not per token); nll_bound: an upper "
           "bound on the NLL in nats per token (ELBO over insertion orders); perplexity is a bound",
}


def _task_config(run: dict, name: str | None, where: Path) -> TaskConfig:
    """The run's own task settings (data files, tokenizer, block size) when evaluating on its task."""
    saved = dict((run.get("train_config") or {}).get("task") or {})
    if name is None or name == saved.get("name", run["task"]):
        return (saved_task_config(saved, f"{where / 'config.json'} train_config.task") if saved
                else task_config(run["task"]))
    return task_config(name)


@reports_user_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run = read_run_config(Path(args.model))
    task = build_task(_task_config(run, args.task, Path(args.model)))
    device = resolve_device(args.device)
    model = xlm.load_model(args.model, device=device)
    sampler = load_run_sampler_config(args.model, **_parse_sampler_overrides(args.sampler))
    if task.tokenizer.spec() != run["tokenizer"]:
        raise InvalidValueError(f"task {task.name!r} uses a different vocabulary from the model's "
                                f"(trained on {run['task']!r}); evaluate on a task with the same tokenizer")
    if args.loss_samples < 1:
        raise InvalidValueError(f"--loss-samples must be >= 1, got {args.loss_samples}")
    unit = get_family(run["family"]).unit_factory(model, task.tokenizer, sampler)
    ds = task.dataset(args.split)
    if args.limit is not None:
        ds = ds.select(range(min(args.limit, len(ds))))
    torch.manual_seed(args.seed)
    draws = [evaluate_loss(unit, ds, batch_size=args.batch_size, device=device, progress=True)
             for _ in range(args.loss_samples)]  # each pass draws fresh noise levels / drop patterns
    metrics = {k: sum(d[k] for d in draws) / len(draws) for k in ("loss", "nll_bound") if k in draws[0]}
    note = LOSS_MEANING.get(run["family"], "loss: nats per token")
    if not task.is_seq2seq:  # from the per-token NLL, or the bound on it where the loss is not per token
        metrics["perplexity"] = math.exp(min(metrics.get("nll_bound", metrics["loss"]), 50.0))
    records: list[dict] = []
    if task.is_seq2seq:
        means, records = evaluate_predictions(unit, task, ds, batch_size=args.batch_size, device=device,
                                              progress=True)
        metrics.update(means)
    result = {"model": args.model, "task": task.name, "split": args.split, "num_examples": len(ds), **metrics,
              "loss_samples": args.loss_samples, "loss_meaning": note}
    output = Path(args.output or Path(args.model) / f"eval_{task.name}_{args.split}.json")
    output.write_text(json.dumps(result, indent=2) + "\n")
    if args.predictions:
        with open(args.predictions, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    width = max(len(k) for k in metrics)
    print(f"{task.name} / {args.split} ({len(ds)} examples), {args.model}")
    for k, v in metrics.items():
        print(f"  {k:<{width}}  {v:.4f}")
    print(f"  ({note})")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
