"""Ship a trained run inside the package: its weights, config and a card pinning both by sha256, the exact
training command and its measured test metrics.

    python scripts/ship_checkpoint.py runs/ilm_star_easy --name ilm_star_easy \\
        --command "python -m xlm.recipes.train --arch ilm_star --task star_easy"

Writes assets/cards/checkpoints/NAME/{model.safetensors,config.json} and
assets/cards/NAME.yaml. The card records the test metrics of the full split (from the run's
eval_<task>_test.json) and of the first SLICE test examples, which tests/test_shipped_checkpoints.py
re-measures. A run trained by `xlm compare` ships the same way (its test metrics are in eval_test.json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
import yaml

import xlm
from xlm.assets.download import sha256_of
from xlm.data.tasks import build_task, task_config
from xlm.errors import InvalidValueError, PathNotFoundError, reports_user_errors
from xlm.recipes.evaluation import evaluate_predictions
from xlm.run_dir import load_run_sampler_config, read_run_config

CARD_DIR = Path(__file__).resolve().parent.parent / "assets" / "cards"  # the repository's, shipped in the wheel
SLICE = 500
MAX_BYTES = 4 * 1024 * 1024


def slice_metrics(run: Path, task_name: str, limit: int = SLICE) -> dict[str, float]:
    """Mean test metrics over the first `limit` examples, seeded as the evaluate recipe does."""
    task = build_task(task_config(task_name))
    config = read_run_config(run)
    unit = xlm.get_family(config["family"]).unit_factory(xlm.load_model(run), task.tokenizer,
                                                          load_run_sampler_config(run))
    torch.manual_seed(0)
    means, _ = evaluate_predictions(unit, task, task.dataset("test").select(range(limit)), batch_size=250,
                                    device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    return {k: round(v, 4) for k, v in means.items()}


@reports_user_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--command", required=True, help="the exact command that trained the run")
    args = p.parse_args(argv)
    config = read_run_config(args.run)
    weights = args.run / "model.safetensors"
    if weights.stat().st_size > MAX_BYTES:
        raise InvalidValueError(f"{weights} is {weights.stat().st_size} bytes, over the {MAX_BYTES} allowed")
    # `xlm eval` writes eval_<task>_test.json, `xlm compare` eval_test.json
    results = [args.run / f"eval_{config['task']}_test.json", args.run / "eval_test.json"]
    found = [f for f in results if f.is_file()]
    if not found:
        raise PathNotFoundError(f"no test metrics in {args.run} ({' or '.join(f.name for f in results)}); run "
                                f"`xlm eval --model {args.run} --split test` first")
    test = json.loads(found[0].read_text())
    split_size = len(build_task(task_config(config["task"])).dataset("test"))
    if test.get("num_examples") != split_size:
        raise InvalidValueError(f"{found[0]} scores {test.get('num_examples')} test examples, not the whole split "
                                f"({split_size}); run `xlm eval --model {args.run} --split test` without --limit")
    for kind in ("sampler", "task"):
        if test.get(f"{kind}_overrides"):
            raise InvalidValueError(f"{found[0]} was scored with {kind} settings other than the run's "
                                    f"({test[f'{kind}_overrides']}); run `xlm eval --model {args.run} --split test` "
                                    f"without {kind} overrides")
    target = CARD_DIR / "checkpoints" / args.name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, target / "model.safetensors")
    slim = {k: v for k, v in config.items() if k != "train_config"}  # the card carries the command instead
    (target / "config.json").write_text(json.dumps(slim, indent=2) + "\n")
    card = {"name": args.name, "model_family": config["family"], "model_arch": config["arch"],
            "checkpoint": f"checkpoints/{args.name}/model.safetensors", "checkpoint_format": "xlm",
            "sha256": {name: sha256_of(target / name) for name in ("model.safetensors", "config.json")},
            "task": config["task"],
            "description": f"{config['arch']} trained on {config['task']} with xlm's own recipe (fp32)",
            "train_command": args.command,
            "metrics": {"test": {k: round(v, 4) for k, v in test.items() if isinstance(v, float)},
                        f"test_first_{SLICE}": slice_metrics(target, config["task"])}}
    (CARD_DIR / f"{args.name}.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    print(f"shipped {args.name}: {target} and {CARD_DIR / (args.name + '.yaml')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
