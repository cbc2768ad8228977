"""python -m benchmarks.xlm_core_peer [--sections train,sample] [--families arlm,mlm,ilm] [--steps N] [--prompts 256]
                                     [--threads 1] [--venv DIR] [--models-dir DIR] [--output FILE.json]

xlm against xlm-core 0.3.1 (github.com/dhruvdcoder/xlm-core), side by side on one machine: each project's own
trainer and own sampler on the same model shapes, batches, weights and prompts. xlm-core runs in its own venv and
process (scripts/xlm_core_venv.py, shared with the converters' cross-check; its half is
benchmarks/xlm_core_peer_side.py); the two exchange json and safetensors files through a work dir.

Both hold one layout: xlm's star archs with `PEER_LAYOUT` (no attention biases, tanh GELU), the layout
`xlm.export(model, dir, format="xlm_core")` writes (it refuses xlm's shipped star cards: attention biases, erf
GELU), at the star size (4 layers x 128, 4 heads) and a larger one (6 x 512, 8 heads).

  train   per family and shape, N optimizer steps after a warm-up on star_easy rows, batch 64: xlm's Trainer
          (its step: collation, loss, backward, clipping, AdamW, schedule; CPU kernels on, as a user gets them)
          against xlm-core's Harness under lightning.Trainer.fit with its own network class, loss and collator.
          s/step each, the ratio xlm-core/xlm, and MFU each: the FLOPs of one step counted by torch (attention
          scores added by one rule on both sides) over a fp32 matmul peak timed in the same process.
  sample  per family, a model of the peer layout trained by xlm's own recipe on star_easy (cached in
          --models-dir; trained on first use), exported to xlm-core's hub layout; the first --prompts star_easy
          test prompts, both sides in batches of --batch-size laid out by xlm's collator: greedy ARLM (xlm: KV
          cache), MLM unmasking one position per call by top probability (count schedule), ILM greedy insertion
          of one (gap, token) pair per call until the stop head says stop. After one untimed batch on each side,
          wall time each, ratio, model calls, exact match and full-length rows each, and the fraction of rows
          whose outputs are token-identical. MLM and ILM also run xlm's samplers that commit several positions
          or insertions per call (`PARALLEL`), against the same xlm-core rows and xlm's own one per call.

Prints a markdown table per section; --output writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import xlm
from benchmarks.bench import bench_peak
from scripts.xlm_core_venv import DEFAULT_VENV, ensure_venv, run_in_venv
from xlm.errors import InvalidValueError, XlmUserError, reports_user_errors
from xlm.registry import get_family

SIDE = Path(__file__).resolve().parent / "xlm_core_peer_side.py"
FAMILIES = ("arlm", "mlm", "ilm")
SECTIONS = ("train", "sample")
TASK = "star_easy"
#: the model config fields that put xlm's star archs in the layout xlm-core's classes hold
PEER_LAYOUT = {"attn_bias": False, "activation": "gelu_tanh"}
#: the train section's shapes: the star archs' own size, and a larger one
SHAPES = {"star": {}, "6x512": {"model_dim": 512, "num_layers": 6, "num_heads": 8, "ffn_dim": 2048}}
#: the optimizer both trainers use in the train section (xlm-core's star recipe: AdamW 1e-4, weight decay 0.01)
OPTIMIZER = {"lr": 1e-4, "betas": [0.9, 0.999], "weight_decay": 0.01, "eps": 1e-8}
BATCH = 64
#: the recipe of the sample section's models: xlm's star recipe (configs/arch/<family>_star.yaml) in the peer layout
#: for enough steps that every row runs to full length (ARLM and MLM learn star_easy's length at once; ILM's rows
#: are full length from a few thousand steps, and its exact match is 0.44 on the validation rows at 10,000)
RECIPE_STEPS = {"arlm": 1500, "mlm": 1500, "ilm": 10000}
#: xlm's sampler settings of the sample section (the rest from the trained run's config)
SAMPLERS: dict[str, dict[str, Any]] = {
    "arlm": {"strategy": "greedy", "use_kv_cache": True},
    "mlm": {"strategy": "greedy", "position_selection": "top_prob", "unmask_schedule": "count", "num_steps": None},
    "ilm": {"strategy": "greedy", "insertions_per_step": 1, "max_steps": None},
}
#: xlm's samplers that commit several positions (MLM: Fast-dLLM's confidence threshold) or insertions (ILM: up to k
#: in distinct gaps) per call, timed beside the one-per-call rows: xlm-core has no such sampler for these families
PARALLEL: dict[str, dict[str, Any]] = {
    "mlm": {**SAMPLERS["mlm"], "unmask_schedule": "threshold", "confidence_threshold": 0.9},
    "ilm": {**SAMPLERS["ilm"], "insertions_per_step": 4},
}
#: xlm-core's seq2seq collators' sizes for star_easy's rows (26 prompt tokens, 8 target tokens): no padding, the
#: rows xlm's collators make (ARLM: prompt [BOS] target [EOS]; MLM: prompt, target [EOS]; ILM: [CLS] prompt
#: [BOS] target)
XLM_CORE_BLOCKS = {"input_block_size": {"arlm": 27, "mlm": 26, "ilm": 27},
                   "block_size": {"arlm": 9, "mlm": 9, "ilm": 9}}


class PeerBenchError(XlmUserError, RuntimeError):
    """A side could not be set up: a model's training failed, or the two sides would read tokens differently."""


def peer_model_overrides(shape: Mapping[str, Any]) -> list[str]:
    """`model.KEY=VALUE` overrides of xlm's train recipe for the peer layout at `shape`."""
    values = {**PEER_LAYOUT, **shape}
    return [f"model.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in values.items()]


def recipe_command(family: str, run_dir: Path, threads: int) -> list[str]:
    """The xlm train command of the sample section's model of `family`."""
    steps = RECIPE_STEPS[family]
    return [sys.executable, "-m", "xlm.recipes.train", "--arch", f"{family}_star", "--task", TASK,
            "--output-dir", str(run_dir), *peer_model_overrides({}), f"trainer.num_threads={threads}",
            f"trainer.max_steps={steps}", f"trainer.eval_every_steps={steps}", "trainer.checkpoint_every_steps=500"]


def trained_model(family: str, models_dir: Path, threads: int) -> Path:
    """The run dir of the sample section's model of `family`, trained with `recipe_command` when it has no model
    yet (a run cut short resumes from its last checkpoint)."""
    run_dir = models_dir / f"{family}_{TASK}"
    if not (run_dir / "model.safetensors").is_file():
        command = recipe_command(family, run_dir, threads)
        print(f"training {family} for the sample section: {' '.join(command[1:])}", file=sys.stderr, flush=True)
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "OMP_NUM_THREADS": str(threads),
               "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
            raise PeerBenchError(f"training {family}'s model failed (exit {proc.returncode}): "
                                  f"{' '.join(command)}\n{tail}")
    return run_dir


# -- train -----------------------------------------------------------------------------------------------------------

def xlm_trainer(family: str, shape: Mapping[str, Any], output_dir: Path, threads: int) -> Any:
    """xlm's Trainer as `python -m xlm.recipes.train` builds it, for the peer layout at `shape` on star_easy with
    the section's optimizer (constant rate, no warm-up), batch 64, collated in this process."""
    from xlm.data.tasks import build_task
    from xlm.recipes.config import build_config
    from xlm.recipes.distributed import init_distributed
    from xlm.recipes.train import fit_model_to_task
    from xlm.recipes.trainer import Trainer

    spec = get_family(family)
    beta1, beta2 = OPTIMIZER["betas"]
    overrides = [*peer_model_overrides(shape), f"optim.lr={OPTIMIZER['lr']}", f"optim.beta1={beta1}",
                 f"optim.beta2={beta2}", f"optim.weight_decay={OPTIMIZER['weight_decay']}", "optim.warmup_steps=0",
                 "optim.schedule=constant", f"data.batch_size={BATCH}", "data.num_workers=0",
                 f"trainer.num_threads={threads}", "trainer.progress_bar=false"]
    composed = build_config(family=spec, arch=f"{family}_star", task=TASK, output_dir=str(output_dir),
                            overrides=overrides)
    task = build_task(composed.config.task)
    config = fit_model_to_task(composed, task)
    return Trainer(config, spec, task, init_distributed(config.trainer.device))


def counted_step_flops(step: Callable[[], Any], *, layers: int, width: int, seq_len: int, tokens: int) -> int:
    """One step's FLOPs: torch's count without its attention kernels (counted on some paths, not on others), plus
    the attention scores, 12 L d T per real token for rows of T columns: the rule xlm-core's side uses too."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    attention = sum(n for op, n in counter.get_flop_counts()["Global"].items() if "attention" in str(op))
    return counter.get_total_flops() - attention + 12 * layers * width * seq_len * tokens


def time_xlm_train(family: str, shape_name: str, steps: int, warmup: int, threads: int, work: Path) -> dict[str, Any]:
    """s/step of xlm's Trainer step over `steps` steps after `warmup`, its FLOPs and the peak, in this process."""
    trainer = xlm_trainer(family, SHAPES[shape_name], work / "xlm_runs" / f"{family}_{shape_name}", threads)
    with torch.no_grad():  # the width of a collated batch
        rows = trainer.train_ds.select(range(BATCH)).to_list()
        width = trainer.unit.collate_train(rows)["input_ids"].size(1)
    for _ in range(warmup):
        trainer._train_step()
    start = time.perf_counter()
    for _ in range(steps):
        stats = trainer._train_step()
    seconds = (time.perf_counter() - start) / steps
    config = trainer.model.config
    flops = counted_step_flops(trainer._train_step, layers=config.num_layers, width=config.model_dim,
                               seq_len=width, tokens=stats["tokens"])
    return {"s_per_step": seconds, "flops": flops, "tokens": stats["tokens"], "seq_len": width,
            "peak_gflops": bench_peak(quick=False)[0]["gflops"], "loss_last": stats["loss"],
            "params": sum(p.numel() for p in trainer.model.parameters())}


def mfu(result: Mapping[str, Any]) -> float:
    return result["flops"] / result["s_per_step"] / 1e9 / result["peak_gflops"]


def train_section(families: Sequence[str], shapes: Sequence[str], steps: int, warmup: int, threads: int,
                  venv: Path, work: Path) -> list[dict[str, Any]]:
    """Per family and shape, xlm's trainer here and xlm-core's in its venv; one row each."""
    from xlm.data.tasks import build_task, task_config

    task = build_task(task_config(TASK))
    rows = task.dataset("train").select(range((warmup + steps) * BATCH)).select_columns(["prompt_ids", "target_ids"])
    (work / "train_rows.json").write_text(json.dumps(rows.to_list()))
    configs: dict[str, list[dict[str, Any]]] = {}
    for family in families:
        for name in shapes:
            model = xlm.create_model(f"{family}_star", vocab_size=len(task.tokenizer), **PEER_LAYOUT, **SHAPES[name])
            xlm.export(model, work / f"config_{family}_{name}", format="xlm_core")
            configs.setdefault(family, []).append({"name": name, "config_dir": f"config_{family}_{name}",
                                                   "layers": model.config.num_layers,
                                                   "width": model.config.model_dim})
    job = {"families": list(families), "shapes": configs, "steps": steps, "warmup": warmup, "batch_size": BATCH,
           "rows": "train_rows.json", "words": len(task.tokenizer) - len(special_ids(task.tokenizer)),
           "optimizer": OPTIMIZER, "threads": threads, **XLM_CORE_BLOCKS}
    (work / "train_job.json").write_text(json.dumps(job, indent=2))
    run_in_venv(venv, SIDE, ["train", str(work)], what="xlm-core's side (train)", cwd=work, threads=threads)
    theirs = {(r["family"], r["shape"]): r for r in json.loads((work / "train_result.json").read_text())["results"]}
    out = []
    for family in families:
        for name in shapes:
            ours = time_xlm_train(family, name, steps, warmup, threads, work)
            other = theirs[family, name]
            out.append({"family": family, "shape": name, "xlm": ours, "xlm_core": other,
                        "ratio": other["s_per_step"] / ours["s_per_step"], "xlm_mfu": mfu(ours),
                        "xlm_core_mfu": mfu(other)})
    return out


# -- sample ----------------------------------------------------------------------------------------------------------

def special_ids(tokenizer: Any) -> dict[str, int]:
    """The special ids xlm-core's number tokenizer has, as xlm's tokenizer gives them."""
    return {name: getattr(tokenizer, f"{name}_token_id") for name in ("pad", "cls", "mask", "eos", "bos", "sep",
                                                                      "unk")}


#: xlm-core's SimpleSpaceTokenizer.for_numbers: the special ids before the words
XLM_CORE_SPECIAL_IDS = {"pad": 0, "cls": 1, "mask": 2, "eos": 3, "bos": 4, "sep": 5, "unk": 6}


def xlm_core_predictor(family: str, batch: Mapping[str, Any], sampler: Any) -> tuple[dict[str, torch.Tensor],
                                                                                      dict[str, Any]]:
    """xlm's prediction batch as xlm-core's predictor of the family takes it, and that predictor's settings for
    xlm's rule (read from xlm-core 0.3.1's arlm/predictor_arlm.py, mlm/predictor_mlm.py, ilm/predictor_ilm.py):

    ARLM  the left-padded prompt + [BOS]; greedy is top-k sampling with k = 1; it stops when every row has [EOS]
          or the rows reach max_length, here the prompt's width + max_new_tokens
    MLM   the whole row, [MASK] block included (max_new_tokens None: nothing appended); confidence "top_prob"
          picked greedily (confidence_temperature 0), greedy tokens (temperature 0) and, with threshold None, the
          count schedule: each call unmasks masked / steps_left positions, one when max_steps is the block size
    ILM   the row, [CLS] in column 0 (cls_position 0), insertions only after [BOS] (constraint: every other
          column); the joint (gap, token) argmax (top-k 1 without a second sampler); [MASK], [PAD] and [CLS]
          never inserted (xlm's rule; xlm-core's default also bars [EOS] and [BOS]); a row stops when the stop
          head's probability reaches the threshold, or (oracle_length) after max_new_tokens insertions

    What stays apart: xlm-core's MLM predictor bars no token (xlm bars [MASK], and [PAD] before the block) and its
    confidence counts [MASK]'s probability; a trained model puts no mass there, an untrained one can. Its MLM and
    ILM predictors make one more model call per batch after the last unmasking or insertion.
    """
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    width = ids.size(1)
    if family == "arlm":
        return ({"input_ids": ids, "attention_mask": mask},
                {"max_steps": sampler.max_new_tokens, "max_length": width + sampler.max_new_tokens,
                 "sampling_method": "sample_top_k", "top": 1})
    if family == "mlm":
        return ({"input_ids": ids, "attention_mask": mask},
                {"max_steps": sampler.max_new_tokens, "max_new_tokens": None, "confidence": "top_prob",
                 "threshold": None, "confidence_temperature": 0.0, "temperature": 0.0})
    if family != "ilm":
        raise InvalidValueError(f"no xlm-core predictor settings for {family}: ARLM, MLM and ILM have them")
    return ({"input_ids": ids, "attention_mask": mask, "cls_position": torch.zeros(ids.size(0), dtype=torch.long),
             "constraint": ~batch["gap_mask"].bool(), "oracle_length": mask.sum(1) + sampler.max_new_tokens},
            {"max_steps": sampler.max_new_tokens + 1, "max_length": width + sampler.max_new_tokens + 1,
             "stopping_threshold": sampler.stop_threshold, "tokens_to_suppress": ["[MASK]", "[PAD]", "[CLS]"],
             "sampling_method": "sample_top_k", "top": 1})


def outputs_from_xlm_core(family: str, raw: Mapping[str, torch.Tensor], batch: Mapping[str, Any],
                          unit: Any) -> list[list[int]]:
    """xlm-core's raw output of one batch, read by xlm's own rule for its own rows: ARLM's tokens after the prompt
    until [EOS], MLM's block (cut at [EOS], special tokens dropped), ILM's inserted columns in sequence order."""
    from xlm.models.ilm.metrics import insertion_predictions
    from xlm.models.mlm.metrics import block_predictions

    tokenizer, width = unit.tokenizer, batch["input_ids"].size(1)
    if family == "arlm":
        eos = tokenizer.eos_token_id  # xlm-core's star tokenizers all have one
        return [unit.predictor._until_eos(row, eos) for row in raw["x"][:, width:].tolist()]
    if family == "mlm":
        return block_predictions(raw["x"], batch["block_start"], tokenizer)[0]
    inserted = raw["attention_mask"].bool().clone()
    inserted[:, :width] = False
    return insertion_predictions(raw["x"], raw["positions"], inserted, tokenizer)[0]


def rows_of(batch: Mapping[str, Any], first: int, last: int) -> dict[str, Any]:
    """Rows first..last of a collated batch (its per-row tensors and lists; the rest as it is)."""
    size = batch["input_ids"].size(0)
    return {k: v[first:last] if isinstance(v, (torch.Tensor, list)) and len(v) == size else v
            for k, v in batch.items()}


def counting_calls(model: torch.nn.Module) -> list[int]:
    """Counts the model's forward calls into the returned one-item list."""
    calls = [0]
    forward = model.forward

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return forward(*args, **kwargs)

    model.forward = counted  # type: ignore[method-assign]
    return calls


def timed_predictions(unit: Any, batch: Mapping[str, Any], prompts: int, batch_size: int,
                      calls: list[int]) -> dict[str, Any]:
    """One untimed batch (xlm-core's side does the same), then every batch: wall time, the model calls
    `counting_calls` counted over them, and the generated ids."""
    unit.predict(rows_of(batch, 0, batch_size))
    calls[0], ids = 0, []
    start = time.perf_counter()
    for first in range(0, prompts, batch_size):
        ids += unit.predict(rows_of(batch, first, first + batch_size))["ids"]
    return {"seconds": time.perf_counter() - start, "model_calls": calls[0], "ids": ids}


def sample_section(families: Sequence[str], prompts: int, batch_size: int, threads: int, venv: Path,
                   models_dir: Path, work: Path) -> list[dict[str, Any]]:
    """Per family: the trained model, xlm's sampler here, its export under xlm-core's predictor in the venv."""
    from xlm.data.tasks import build_task, task_config
    from xlm.run_dir import load_run_sampler_config

    task = build_task(task_config(TASK))
    if special_ids(task.tokenizer) != XLM_CORE_SPECIAL_IDS:
        raise PeerBenchError(f"{TASK}'s special ids {special_ids(task.tokenizer)} are not xlm-core's "
                              f"{XLM_CORE_SPECIAL_IDS}: the two sides would read different tokens")
    examples = task.dataset("test").select(range(prompts)).select_columns(["prompt_ids", "target_ids"]).to_list()
    targets = [ex["target_ids"] for ex in examples]
    ours: dict[str, dict[str, Any]] = {}
    job: dict[str, Any] = {"families": {}, "batch_size": batch_size, "threads": threads,
                           "words": len(task.tokenizer) - len(XLM_CORE_SPECIAL_IDS)}
    for family in families:
        run_dir = trained_model(family, models_dir, threads)
        model = xlm.load_model(run_dir).eval()
        sampler = load_run_sampler_config(run_dir, **SAMPLERS[family])
        unit = get_family(family).unit_factory(model, task.tokenizer, sampler)
        batch = unit.collate_predict(examples)
        calls = counting_calls(model)
        ours[family] = {**timed_predictions(unit, batch, prompts, batch_size, calls), "unit": unit, "batch": batch}
        if family in PARALLEL:
            fast = get_family(family).unit_factory(model, task.tokenizer,
                                                   load_run_sampler_config(run_dir, **PARALLEL[family]))
            ours[family]["parallel"] = {**timed_predictions(fast, batch, prompts, batch_size, calls),
                                        "settings": PARALLEL[family]}
        hub = f"{family}_hub"
        xlm.export(model, work / hub, format="xlm_core")
        inputs, settings = xlm_core_predictor(family, batch, sampler)
        save_file({k: v.contiguous() for k, v in inputs.items()}, work / f"{family}_inputs.safetensors")
        job["families"][family] = {"hub_dir": hub, "inputs": f"{family}_inputs.safetensors", "settings": settings,
                                   "run_dir": str(run_dir)}
    (work / "sample_job.json").write_text(json.dumps(job, indent=2))
    run_in_venv(venv, SIDE, ["sample", str(work)], what="xlm-core's side (sample)", cwd=work, threads=threads)
    theirs = {r["family"]: r for r in json.loads((work / "sample_result.json").read_text())["results"]}
    out = []
    for family in families:
        mine, other = ours[family], theirs[family]
        raw = load_file(work / other["outputs"])
        their_ids: list[list[int]] = []
        for number, first in enumerate(range(0, prompts, batch_size)):
            part = {k.split(".", 1)[1]: v for k, v in raw.items() if k.startswith(f"{number}.")}
            their_ids += outputs_from_xlm_core(family, part, rows_of(mine["batch"], first, first + batch_size),
                                               mine["unit"])
        out.append({"family": family, "prompts": prompts, "batch_size": batch_size,
                    "run_dir": job["families"][family]["run_dir"], "settings": job["families"][family]["settings"],
                    "xlm": summary(mine["ids"], targets, mine["seconds"], mine["model_calls"]),
                    "xlm_core": summary(their_ids, targets, other["seconds"], other["model_calls"]),
                    "ratio": other["seconds"] / mine["seconds"],
                    "identical": sum(a == b for a, b in zip(mine["ids"], their_ids)) / prompts,
                    "differing_rows": [i for i, (a, b) in enumerate(zip(mine["ids"], their_ids)) if a != b][:20]})
        if "parallel" in mine:
            fast = mine["parallel"]
            out[-1]["parallel"] = {**summary(fast["ids"], targets, fast["seconds"], fast["model_calls"]),
                                   "settings": fast["settings"], "ratio": other["seconds"] / fast["seconds"],
                                   "same_as_one_per_call": sum(a == b for a, b in zip(fast["ids"], mine["ids"]))
                                   / prompts}
    return out


def summary(ids: Sequence[list[int]], targets: Sequence[list[int]], seconds: float, calls: int) -> dict[str, Any]:
    """Wall time, model calls, exact match and the fraction of rows as long as their target."""
    return {"seconds": seconds, "model_calls": calls,
            "exact_match": sum(a == t for a, t in zip(ids, targets)) / len(targets),
            "full_length": sum(len(a) == len(t) for a, t in zip(ids, targets)) / len(targets)}


# -- output ----------------------------------------------------------------------------------------------------------

def train_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| family | shape | xlm s/step | xlm-core s/step | xlm-core / xlm | xlm MFU | xlm-core MFU | "
             "tokens/step (xlm, xlm-core) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['shape']} | {r['xlm']['s_per_step']:.4f} | "
                     f"{r['xlm_core']['s_per_step']:.4f} | {r['ratio']:.2f}x | {r['xlm_mfu']:.3f} | "
                     f"{r['xlm_core_mfu']:.3f} | {r['xlm']['tokens']}, {r['xlm_core']['tokens']} |")
    return "\n".join(lines)


def sample_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| family | prompts (batch) | xlm s | xlm-core s | xlm-core / xlm | model calls (xlm, xlm-core) | "
             "exact match (xlm, xlm-core) | full length (xlm, xlm-core) | identical rows |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r["xlm"], r["xlm_core"]
        lines.append(f"| {r['family']} | {r['prompts']} ({r['batch_size']}) | {a['seconds']:.3f} | "
                     f"{b['seconds']:.3f} | {r['ratio']:.2f}x | {a['model_calls']}, {b['model_calls']} | "
                     f"{a['exact_match']:.3f}, {b['exact_match']:.3f} | {a['full_length']:.3f}, "
                     f"{b['full_length']:.3f} | {r['identical']:.3f} |")
    return "\n".join(lines)


def parallel_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """xlm's several-per-call samplers against xlm-core's one per call (and xlm's own one per call)."""
    lines = ["| family | xlm sampler | xlm s | xlm-core s (one per call) | xlm-core / xlm | "
             "model calls (xlm, xlm-core) | exact match (xlm, xlm one per call) | rows as xlm's one per call |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "parallel" not in r:
            continue
        f, settings = r["parallel"], r["parallel"]["settings"]
        how = (f"threshold {settings['confidence_threshold']}" if "confidence_threshold" in settings
               else f"up to {settings['insertions_per_step']} insertions per call")
        lines.append(f"| {r['family']} | {how} | {f['seconds']:.3f} | {r['xlm_core']['seconds']:.3f} | "
                     f"{f['ratio']:.2f}x | {f['model_calls']}, {r['xlm_core']['model_calls']} | "
                     f"{f['exact_match']:.3f}, {r['xlm']['exact_match']:.3f} | {f['same_as_one_per_call']:.3f} |")
    return "\n".join(lines)


def names(text: str, allowed: Sequence[str], what: str) -> list[str]:
    chosen = [n for n in text.split(",") if n]
    unknown = [n for n in chosen if n not in allowed]
    if unknown or not chosen:
        raise InvalidValueError(f"{what} {unknown or text!r}: choose from {', '.join(allowed)}")
    return chosen


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated: %(default)s")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated: %(default)s")
    p.add_argument("--shapes", default=",".join(SHAPES), help="train section's shapes, comma-separated: %(default)s")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per trainer (default %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="steps before the timed ones (default %(default)s)")
    p.add_argument("--prompts", type=int, default=256, help="star_easy test prompts sampled (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per sampling batch, both sides (%(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, both sides (default %(default)s)")
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                   help="xlm-core's venv, made there on first use (default: %(default)s)")
    p.add_argument("--models-dir", type=Path, default=Path.home() / ".cache" / "xlm" / "peer-models",
                   help="the sample section's trained models, trained there on first use (default: %(default)s)")
    p.add_argument("--work-dir", type=Path, default=None, help="the exchanged files (default: a temporary dir)")
    p.add_argument("--output", type=Path, default=None, help="write every measurement as JSON here")
    args = p.parse_args(argv)
    for name in ("steps", "warmup", "prompts", "batch_size", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


@reports_user_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sections = names(args.sections, SECTIONS, "--sections")
    families = names(args.families, FAMILIES, "--families")
    shapes = names(args.shapes, list(SHAPES), "--shapes")
    torch.set_num_threads(args.threads)
    installed = ensure_venv(args.venv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="xlm-core-peer-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"threads": args.threads, "torch": torch.__version__, "host_load": os.getloadavg(),
                              "venv_installed_s": installed}
    if "train" in sections:
        result["train"] = train_section(families, shapes, args.steps, args.warmup, args.threads, args.venv, work)
        print(train_table(result["train"]) + "\n")
    if "sample" in sections:
        result["sample"] = sample_section(families, args.prompts, args.batch_size, args.threads, args.venv,
                                          args.models_dir, work)
        print(sample_table(result["sample"]) + "\n")
        print(parallel_table(result["sample"]) + "\n")
    result["xlm_core_versions"] = json.loads(next(work.glob("*_result.json")).read_text())["versions"]
    result["host_load_after"] = os.getloadavg()
    if args.output:
        args.output.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
