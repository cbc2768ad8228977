"""python -m benchmarks.gpu [SECTION ...] [--output gpu_bench.json] [--dry-run]   (from the repository root)

The bench on a CUDA GPU, each comparison against its peer run in the same process (run by
benchmarks/gpu_check.sh, with the GPU tests). Sections:

  gpt2_small   arlm_small (GPT-2 small: 12 x 768, 1024 context, GPT-2's vocabulary) training step
               against HF GPT-2 of the same shape, same settings on both sides: bf16 autocast, SDPA
               attention, torch.compile, fused AdamW; tokens/s and MFU against the card's peak
  mdlm_base    mdlm_base training step (bf16 autocast, compiled): tokens/s and MFU
  generate     KV-cache greedy generation, xlm against HF `generate` (GPT-2 small shape, fp32, same weights)
  mdlm_cache   MDLM cached vs uncached ancestral sampler (benchmarks.bench mdlm_cache on the GPU)
  data_wait    share of the trainer's step time spent waiting on data, 0 and 2 workers (bf16 autocast)
  memory       peak training memory per family and HF GPT-2 at 6 x 512, with and without activation
               checkpointing (bf16 autocast, torch.cuda.max_memory_allocated)

MFU is the model FLOPs of a step (counted by torch's FlopCounterMode on one eager step: every
matmul and the SDPA kernels, forward and backward) over its time, against the card's dense bf16
peak from `BF16_PEAK_TFLOPS` (NVIDIA's datasheet figures, looked up by the name torch reports).

--dry-run runs every section at a toy size on the CPU (compiling with dynamo's "eager" backend,
which traces but generates no kernels): it checks that the script runs where no GPU is, and
measures nothing worth reading.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.bench import TOKENIZER, _NoStopTokenizer, bench_mdlm_cache, interleaved, print_table, targets

Row = dict[str, Any]

#: Dense (no sparsity) bf16 tensor-core peak, TFLOP/s, from NVIDIA's datasheets, keyed by a part of
#: the name `torch.cuda.get_device_name()` reports; the first key found in the name wins, so the
#: more specific names come first.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM: "NVIDIA H100 80GB HBM3"
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("A100", 312.0),
)


def bf16_peak_flops(device_name: str) -> float | None:
    """The card's dense bf16 peak in FLOP/s, or None for a card not in the table (MFU is then left out)."""
    return next((tflops * 1e12 for key, tflops in BF16_PEAK_TFLOPS if key in device_name), None)


@dataclass(frozen=True)
class Setup:
    """Where and at what size the sections run: the GPU at full size, or the CPU at a toy size (--dry-run)."""

    device: str
    dry_run: bool

    @property
    def peak(self) -> float | None:
        return bf16_peak_flops(torch.cuda.get_device_name()) if self.device == "cuda" else None

    def compile(self, module: torch.nn.Module) -> torch.nn.Module:
        return torch.compile(module, backend="eager" if self.dry_run else "inductor")  # type: ignore[return-value]

    def synced(self, fn: Callable[[], Any]) -> Callable[[], None]:
        """`fn`, returning only once the device has finished it (so that host timers time the work)."""
        def run() -> None:
            fn()
            if self.device == "cuda":
                torch.cuda.synchronize()
        return run

    @property
    def repeats(self) -> int:
        return 2 if self.dry_run else 10


def _gpt2_shape(setup: Setup) -> dict[str, int]:
    if setup.dry_run:
        return {"layers": 2, "dim": 64, "heads": 2, "vocab": 512, "context": 64, "batch": 2, "seq": 32}
    return {"layers": 12, "dim": 768, "heads": 12, "vocab": 50257, "context": 1024, "batch": 16, "seq": 1024}


def _step_flops(step: Callable[[], None]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def _train_step(loss: Callable[[], torch.Tensor], optim: torch.optim.Optimizer, device: str) -> Callable[[], None]:
    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16):
            value = loss()
        value.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
    return step


def _rates(flops: float, seconds: float, tokens: int, peak: float | None) -> Row:
    return {"tokens_per_s": round(tokens / seconds), "tflops": round(flops / seconds / 1e12, 2),
            "mfu": round(flops / seconds / peak, 3) if peak else None}


def bench_gpt2_small(setup: Setup) -> list[Row]:
    import transformers

    import xlm
    from xlm.models.arlm.collators import ArlmLMCollator
    from xlm.models.arlm.loss import arlm_loss
    from xlm.recipes.config import OptimConfig
    from xlm.recipes.optim import build_adamw

    s = _gpt2_shape(setup)
    device = torch.device(setup.device)
    torch.manual_seed(0)
    ours = xlm.create_model("arlm_small", vocab_size=s["vocab"], model_dim=s["dim"], num_layers=s["layers"],
                            num_heads=s["heads"], ffn_dim=4 * s["dim"], max_seq_len=s["context"]).to(device)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=s["vocab"], n_positions=s["context"], n_embd=s["dim"], n_layer=s["layers"], n_head=s["heads"],
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa")).to(device)
    ids = torch.randint(0, s["vocab"], (s["batch"], s["seq"]))
    batch = {k: v.to(device) for k, v in ArlmLMCollator(TOKENIZER, max_len=s["seq"])(
        [{"input_ids": row} for row in ids.tolist()]).items()}
    ids = ids.to(device)
    config = OptimConfig(lr=1e-4)
    ours_c, hf_c = setup.compile(ours), setup.compile(hf)
    optim = build_adamw(ours.parameters(), config, device=device)
    # the same shape on both sides: HF's step does this work too
    flops = _step_flops(_train_step(lambda: arlm_loss(ours, batch)["loss"], optim, setup.device))
    step_ours = setup.synced(_train_step(lambda: arlm_loss(ours_c, batch)["loss"], optim, setup.device))
    step_hf = setup.synced(_train_step(lambda: hf_c(input_ids=ids, labels=ids).loss,
                                       torch.optim.AdamW(hf.parameters(), lr=config.lr, fused=True), setup.device))
    t_ours, t_hf = interleaved(step_ours, step_hf, repeats=setup.repeats, warmup=3)
    tokens = s["batch"] * s["seq"]
    return [{"shape": f"{s['layers']}x{s['dim']}", "batch": f"{s['batch']}x{s['seq']}", "device": setup.device,
             "xlm_s": round(t_ours, 4), "hf_s": round(t_hf, 4), "hf_over_xlm": round(t_hf / t_ours, 2),
             **_rates(flops, t_ours, tokens, setup.peak),
             "hf_mfu": round(flops / t_hf / setup.peak, 3) if setup.peak else None}]


def bench_mdlm_base(setup: Setup) -> list[Row]:
    import xlm
    from xlm.recipes.config import OptimConfig
    from xlm.recipes.optim import build_adamw

    s = _gpt2_shape(setup)
    device = torch.device(setup.device)
    torch.manual_seed(0)
    overrides = {"vocab_size": s["vocab"] + 1, "model_dim": s["dim"], "num_layers": s["layers"],
                 "num_heads": s["heads"], "max_seq_len": s["context"]}
    if setup.dry_run:
        overrides.update(cond_dim=32, sigma_embed_dim=32)
    model = xlm.create_model("mdlm_base", **overrides).to(device)
    family = xlm.get_family("mdlm")
    unit = family.unit_factory(model, TOKENIZER, family.sampler_config_class())
    ids = torch.randint(7, len(TOKENIZER), (s["batch"], s["seq"]))
    batch = {k: v.to(device) for k, v in unit.collate_train([{"input_ids": row} for row in ids.tolist()]).items()}
    optim = build_adamw(model.parameters(), OptimConfig(lr=1e-4), device=device)
    flops = _step_flops(_train_step(lambda: unit.loss(model, batch)["loss"], optim, setup.device))
    compiled = setup.compile(model)
    step = setup.synced(_train_step(lambda: unit.loss(compiled, batch)["loss"], optim, setup.device))
    (seconds,) = interleaved(step, repeats=setup.repeats, warmup=3)
    return [{"shape": f"{s['layers']}x{s['dim']}", "batch": f"{s['batch']}x{s['seq']}", "device": setup.device,
             "step_s": round(seconds, 4), **_rates(flops, seconds, s["batch"] * s["seq"], setup.peak)}]


def bench_generate_gpu(setup: Setup) -> list[Row]:
    import transformers

    import xlm
    from xlm.models.arlm.interop import convert_hf_gpt2
    from xlm.models.arlm.predictor import ArlmPredictor, ArlmSamplerConfig

    s = _gpt2_shape(setup)
    batch, prompt_len, new_tokens = (2, 8, 8) if setup.dry_run else (8, 32, 128)
    hf_config = transformers.GPT2Config(vocab_size=s["vocab"], n_positions=s["context"], n_embd=s["dim"],
                                        n_layer=s["layers"], n_head=s["heads"], attn_implementation="sdpa")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    config, state = convert_hf_gpt2(hf.state_dict(), hf_config.to_dict())
    ours = xlm.get_family("arlm").factory(config)
    ours.load_state_dict(state, strict=False)
    ours, hf = ours.to(setup.device).eval(), hf.to(setup.device)
    predictor = ArlmPredictor(ours, _NoStopTokenizer(), ArlmSamplerConfig(max_new_tokens=new_tokens,
                                                                          strategy="greedy"))
    prompt = torch.randint(0, s["vocab"], (batch, prompt_len), device=setup.device)
    mask = torch.ones_like(prompt, dtype=torch.bool)
    out: dict[str, torch.Tensor] = {}

    def run_ours() -> None:
        out["ours"] = predictor.generate(prompt, mask)

    def run_hf() -> None:
        with torch.no_grad():
            out["hf"] = hf.generate(prompt, attention_mask=mask.long(), do_sample=False, max_new_tokens=new_tokens,
                                    min_new_tokens=new_tokens, use_cache=True, pad_token_id=0)

    t_ours, t_hf = interleaved(setup.synced(run_ours), setup.synced(run_hf), repeats=setup.repeats)
    return [{"shape": f"{s['layers']}x{s['dim']}", "batch": batch, "new_tokens": new_tokens, "device": setup.device,
             "xlm_s": round(t_ours, 4), "hf_s": round(t_hf, 4), "hf_over_xlm": round(t_hf / t_ours, 2),
             "same_tokens": bool(torch.equal(out["ours"].cpu(), out["hf"].cpu()))}]


def bench_mdlm_cache_gpu(setup: Setup) -> list[Row]:
    if setup.dry_run:
        return bench_mdlm_cache(True, steps=20, length=8, batches=(2,), device=setup.device)
    return bench_mdlm_cache(False, device=setup.device)


def bench_data_wait_gpu(setup: Setup) -> list[Row]:
    from benchmarks.data_wait import bench_data_wait

    return bench_data_wait(setup.dry_run, setup.device, archs=("mlm_star",) if setup.dry_run else ("ilm_star",
                                                                                                 "mlm_star"))


def bench_memory_gpu(setup: Setup) -> list[Row]:
    from benchmarks.memory import bench_memory

    if setup.dry_run:  # in this process: the CPU's figures are the fresh-process ones of benchmarks.bench memory
        return bench_memory(True, setup.device, families=("arlm", "hf_gpt2"), in_process=True)
    return bench_memory(False, setup.device)


SECTIONS: dict[str, Callable[[Setup], list[Row]]] = {
    "gpt2_small": bench_gpt2_small, "mdlm_base": bench_mdlm_base, "generate": bench_generate_gpu,
    "mdlm_cache": bench_mdlm_cache_gpu, "data_wait": bench_data_wait_gpu, "memory": bench_memory_gpu,
}

#: The GPU targets (issue #31), checked against this run's rows like benchmarks.bench's.
GPU_GOALS = (("gpt2_small", "GPT-2 small training step, HF time / xlm time", "hf_over_xlm", 1.2),
             ("gpt2_small", "GPT-2 small training MFU (bf16 dense peak)", "mfu", 0.45))


def gpu_targets(results: dict[str, Any]) -> list[Row]:
    rows = [{"goal": what, "where": f"device={r['device']}", "measured": r[key], "target": goal,
             "met": r[key] is not None and r[key] >= goal}
            for section, what, key, goal in GPU_GOALS for r in results.get(section, [])]
    return rows + targets({"data_wait": results.get("data_wait", [])})


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sections", nargs="*", default=list(SECTIONS), help=f"any of {', '.join(SECTIONS)}")
    p.add_argument("--dry-run", action="store_true", help="every section at a toy size on the CPU")
    p.add_argument("--output", default=None, help="JSON file for every row")
    args = p.parse_args(argv)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        print(f"error: unknown section(s) {unknown}; choose from {list(SECTIONS)}", file=sys.stderr)
        return 2
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device here; run on a GPU, or --dry-run to check the script on the CPU", file=sys.stderr)
        return 2
    setup = Setup(device="cpu" if args.dry_run else "cuda", dry_run=args.dry_run)
    results: dict[str, Any] = {"torch": torch.__version__, "dry_run": args.dry_run,
                               "device": torch.cuda.get_device_name() if setup.device == "cuda" else "cpu",
                               "bf16_peak_tflops": (setup.peak or 0) / 1e12 or None}
    print(f"device: {results['device']} (dense bf16 peak {results['bf16_peak_tflops']} TFLOP/s)")
    for section in args.sections:
        start = time.perf_counter()
        results[section] = SECTIONS[section](setup)
        print_table(f"{section} ({time.perf_counter() - start:.0f} s)", results[section])
    results["targets"] = gpu_targets(results)
    print_table("targets", results["targets"])
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
