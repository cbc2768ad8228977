"""xlm-core's half of benchmarks/xlm_core_peer.py, run in xlm-core's venv (its package is also named `xlm`, so this
program imports nothing of ours and runs in its own process, `python -I`).

    python -I benchmarks/xlm_core_peer_side.py train WORK    # WORK/train_job.json -> WORK/train_result.json
    python -I benchmarks/xlm_core_peer_side.py sample WORK   # WORK/sample_job.json -> WORK/sample_result.json

`train`: per family and shape, the network is xlm-core's own class built from the config.json xlm exported (the
layout both projects hold), inside xlm-core's `Harness` with its own loss class, fitted by `lightning.Trainer.fit`
on the job's star_easy rows collated by xlm-core's own seq2seq collator, AdamW as the job sets it. A callback notes
the time at the end of every batch; s/step is the span of the steps after the warm-up. The Harness has no metrics
(xlm-core's star runs add diagnostic metrics each step; leaving them out can only make its steps faster). One step's
FLOPs are counted with torch's FlopCounterMode on the loss and its backward, and a 2048 x 2048 fp32 matmul is timed
in this process for the peak.

`sample`: per family, the hub export xlm wrote is loaded with the class's `from_pretrained(strict=True)` and
sampled by xlm-core's own predictor, configured as the job says, batch by batch on the inputs xlm laid out; the
raw output tensors go back (xlm reads them with its own decoding, so both projects' outputs are cut alike).
"""

from __future__ import annotations

import importlib.metadata
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.flop_counter import FlopCounterMode

import hydra
import lightning as L
from xlm.datamodule import SimpleSpaceTokenizer
from xlm.harness import Harness
from xlm.utils import omegaconf_resolvers

#: each family's network, loss (with the arguments of xlm-core's star experiments) and seq2seq training collator
FAMILIES: dict[str, dict[str, Any]] = {
    "arlm": {"model": "arlm.model_arlm.RotaryTransformerARLMModel", "loss": {"_target_": "arlm.loss_arlm.ARLMLoss"},
             "collator": "arlm.datamodule_arlm.ARLMSeq2SeqCollator", "collator_args": {"add_bos": "output",
                                                                                       "add_eos": True}},
    "mlm": {"model": "mlm.model_mlm.RotaryTransformerMLMModel", "loss": {"_target_": "mlm.loss_mlm.MLMLoss"},
            "collator": "mlm.datamodule_mlm.MLMSeq2SeqTrainCollator",
            "collator_args": {"add_bos": False, "add_eos": True, "loss_on_padding": True}},
    "ilm": {"model": "ilm.model_ilm.RotaryTransformerILMModelWithStoppingClassification",
            "loss": {"_target_": "ilm.loss_ilm.ILMLossWithMaskedCE", "length_loss": "binary_ce"},
            "collator": "ilm.datamodule_ilm.ILMSeq2SeqCollator", "collator_args": {}},
}
PEAK_N = 2048


def tokenizer(words: int) -> SimpleSpaceTokenizer:
    """xlm-core's tokenizer for number words: [PAD] 0, [CLS] 1, [MASK] 2, [EOS] 3, [BOS] 4, [SEP] 5, [UNK] 6, then
    the words, the ids xlm's star tokenizer gives (xlm checks the special ids before it sends a job)."""
    return SimpleSpaceTokenizer.for_numbers(vocab_size=words)


def model_args(family: str, config_dir: Path) -> dict[str, Any]:
    """The class's constructor arguments from the exported config.json (the keys it takes)."""
    cls = hydra.utils.get_class(FAMILIES[family]["model"])
    config = json.loads((config_dir / "config.json").read_text())
    return {"_target_": FAMILIES[family]["model"],
            **{k: v for k, v in config.items() if k in cls._hub_mixin_init_parameters}}


def peak_gflops(repeats: int = 10) -> float:
    """fp32 matmul throughput of this process (median of `repeats` after one warm-up)."""
    a, b = torch.randn(PEAK_N, PEAK_N), torch.randn(PEAK_N, PEAK_N)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * PEAK_N**3 / statistics.median(times) / 1e9


def step_flops(loss_fn: Any, model: torch.nn.Module, batch: dict[str, Any], layers: int, width: int) -> dict[str, Any]:
    """One step's FLOPs: torch's count of the loss and its backward without its attention kernels (which it
    counts on some paths and not others), plus the attention scores, 12 L d T per real token for a row of T
    columns, the rule the xlm side uses too."""
    with FlopCounterMode(display=False) as counter:
        loss_fn({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()})["loss"].backward()
    model.zero_grad(set_to_none=True)
    attention_ops = sum(n for op, n in counter.get_flop_counts()["Global"].items() if "attention" in str(op))
    seq = batch["input_ids"].size(1)
    tokens = int(batch["attention_mask"][:, :seq].sum())
    return {"flops": counter.get_total_flops() - attention_ops + 12 * layers * width * seq * tokens,
            "tokens": tokens, "seq_len": seq}


class StepTimes(L.Callback):
    """perf_counter at the end of every training batch (the step, its optimizer update and Lightning's loop)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.times.append(time.perf_counter())


class DataModuleStandIn:
    """What the Harness asks of its datamodule besides the data, which the training loop is given directly."""

    noise_schedule = None
    dataloader_names = {"train": {0: "lm"}, "val": {0: "lm"}, "test": {0: "lm"}, "predict": {0: "prediction"}}

    def print_batch(self, *args: Any) -> None:
        pass


def train_one(family: str, shape: dict[str, Any], job: dict[str, Any], work: Path) -> dict[str, Any]:
    tok = tokenizer(job["words"])
    spec = FAMILIES[family]
    run_dir = work / "xlm_core_runs" / f"{family}_{shape['name']}"
    optim = job["optimizer"]
    config = {"model": model_args(family, work / shape["config_dir"]),
              "predictor": {"_target_": "types.SimpleNamespace", "tokenizer": None, "noise_schedule": None,
                            "model": None},
              "loss": spec["loss"],
              "optimizer": {"_target_": "torch.optim.AdamW", "lr": optim["lr"], "betas": optim["betas"],
                            "weight_decay": optim["weight_decay"], "eps": optim["eps"]},
              "lr_scheduler": {"name": "constant", "num_warmup_steps": 0},
              "lightning_module": {"_target_": "xlm.harness.Harness"}, "paths": {"run_dir": str(run_dir)}}
    torch.manual_seed(0)
    harness = Harness(config, tokenizer=tok, datamodule=DataModuleStandIn())
    collate = hydra.utils.get_class(spec["collator"])(tok, None, block_size=job["block_size"][family],
                                                      input_block_size=job["input_block_size"][family],
                                                      **spec["collator_args"])
    rows = json.loads((work / job["rows"]).read_text())
    examples = [{"prompt_ids": r["prompt_ids"], "input_ids": r["target_ids"]} for r in rows]
    total = job["warmup"] + job["steps"]
    loader = torch.utils.data.DataLoader(examples, batch_size=job["batch_size"], shuffle=False, collate_fn=collate,
                                         num_workers=0)
    timer = StepTimes()
    trainer = L.Trainer(max_steps=total, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                        default_root_dir=str(run_dir), num_sanity_val_steps=0)
    trainer.fit(harness, train_dataloaders=loader)
    if len(timer.times) != total:
        raise RuntimeError(f"{family}: Lightning ran {len(timer.times)} steps, {total} were asked for")
    seconds = (timer.times[-1] - timer.times[job["warmup"] - 1]) / job["steps"]
    counted = step_flops(harness.loss_function, harness.model, collate(examples[:job["batch_size"]]),
                         shape["layers"], shape["width"])
    return {"family": family, "shape": shape["name"], "s_per_step": seconds, "peak_gflops": peak_gflops(),
            "params": sum(p.numel() for p in harness.model.parameters()), **counted,
            "loss_last": float(trainer.callback_metrics.get("train/loss", torch.tensor(float("nan"))))}


# -- sampling ------------------------------------------------------------------------------------------------------

def predictor(family: str, model: torch.nn.Module, tok: SimpleSpaceTokenizer, settings: dict[str, Any]) -> Any:
    """xlm-core's own predictor of the family with the job's settings (see the xlm side's `xlm_core_predictor`)."""
    if family == "arlm":
        from arlm.predictor_arlm import ARLMPredictor

        return ARLMPredictor(tokenizer=tok, model=model, **settings)
    if family == "mlm":
        from mlm.predictor_mlm import MLMPredictor

        # the count schedule (each step unmasks masked / steps_left positions, the most confident first) is
        # the branch predict_single_step takes when `confidence` is set and `threshold` is None; the
        # constructor asks for a threshold whenever `confidence` is set, so it is cleared after
        count_schedule = settings.pop("threshold") is None
        built = MLMPredictor(tokenizer=tok, model=model, threshold=1.0, **settings)
        if count_schedule:
            built.threshold = None
        return built
    from ilm.predictor_ilm import ILMPredictorWithStoppingClassification

    class KeepsRawColumns(ILMPredictorWithStoppingClassification):
        """xlm-core's ILM predictor, which also keeps the columns, positions and attention it decodes from (its
        decode reorders the rows and drops its masks; xlm reads the raw columns as it reads its own)."""

        def decode(self, results: dict[str, Any]) -> Any:
            self.raw = {k: results[k].clone() for k in ("x", "positions", "attention_mask")}
            return super().decode(results)

    return KeepsRawColumns(tokenizer=tok, model=model, **settings)


def batch_rows(family: str, inputs: dict[str, torch.Tensor], first: int, last: int) -> dict[str, torch.Tensor]:
    """Rows first..last of the inputs, copied (the predictors write into their inputs); ILM's with the
    token_type_ids its predictor carries along (read only with input_constraint, which is off)."""
    batch = {k: v[first:last].clone() for k, v in inputs.items()}
    if family == "ilm":
        batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    return batch


def sample_one(family: str, entry: dict[str, Any], job: dict[str, Any], work: Path) -> dict[str, Any]:
    tok = tokenizer(job["words"])
    cls = hydra.utils.get_class(FAMILIES[family]["model"])
    model = cls.from_pretrained(work / entry["hub_dir"], strict=True).eval()
    sampler = predictor(family, model, tok, dict(entry["settings"]))
    inputs = load_file(work / entry["inputs"])
    rows, size = inputs["input_ids"].size(0), job["batch_size"]
    outputs: dict[str, torch.Tensor] = {}
    with torch.inference_mode():  # warm-up, untimed (the xlm side does the same)
        sampler.predict(batch_rows(family, inputs, 0, size))
    calls = [0]
    forward = model.forward

    def counted_forward(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return forward(*args, **kwargs)

    model.forward = counted_forward  # type: ignore[method-assign]
    torch.manual_seed(0)  # the greedy top-1 draw still asks for Gumbel noise
    start = time.perf_counter()
    with torch.inference_mode():
        for number, first in enumerate(range(0, rows, size)):
            out = sampler.predict(batch_rows(family, inputs, first, first + size))
            raw = sampler.raw if family == "ilm" else {"x": out["ids"]}
            outputs.update({f"{number}.{k}": v for k, v in raw.items()})
    seconds = time.perf_counter() - start
    save_file({k: v.contiguous() for k, v in outputs.items()}, work / f"{family}_xlm_core_outputs.safetensors")
    return {"family": family, "seconds": seconds, "model_calls": calls[0], "batches": len(range(0, rows, size)),
            "outputs": f"{family}_xlm_core_outputs.safetensors"}


def main(argv: list[str]) -> int:
    phase, work = argv[0], Path(argv[1])
    omegaconf_resolvers.register_resolvers()
    job = json.loads((work / f"{phase}_job.json").read_text())
    torch.set_num_threads(job["threads"])
    if phase == "train":
        results = [train_one(f, shape, job, work) for f in job["families"] for shape in job["shapes"][f]]
    else:
        results = [sample_one(f, entry, job, work) for f, entry in job["families"].items()]
    versions = {name: importlib.metadata.version(name) for name in ("xlm-core", "xlm-models", "torch", "lightning")}
    (work / f"{phase}_result.json").write_text(json.dumps({"results": results, "versions": versions,
                                                           "threads": torch.get_num_threads()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
