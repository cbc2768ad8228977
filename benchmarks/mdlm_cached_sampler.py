"""MDLM ancestral sampling with and without the ddpm_cache, same model, same seed, one run.

    python benchmarks/mdlm_cached_sampler.py [--steps 1000] [--length 128] [--batch 1] [--arch mdlm_star]

Prints (and writes as JSON with --output) the wall time of each sampler, their ratio, and the
network forward passes each made. With T steps and L masked positions, a step changes a row
with probability 1 - (1 - 1/T)^L, so at T=1000, L=128 about 120 of the 1000 steps need the
network; the uncached sampler calls it at every step. Both must return the same tokens.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import xlm
from xlm.data.tokenizers import WordTokenizer
from xlm.models.mdlm import MdlmPredictor, MdlmSamplerConfig, build_noise_schedule


def run(arch: str, steps: int, length: int, batch: int, seed: int) -> dict[str, float | int | str]:
    torch.manual_seed(seed)
    tokenizer = WordTokenizer([str(i) for i in range(121)])  # 128 ids, as mdlm_star's vocabulary
    model = xlm.create_model(arch, vocab_size=tokenizer.vocab_size, time_conditioning=False).eval()
    with torch.no_grad():  # a fresh DiT predicts uniformly (zero-initialised output): give it an opinion
        for p in model.parameters():
            p.normal_(std=0.02)
    calls = {"n": 0, "rows": 0}

    def count(_module, args, _kwargs=None):
        calls["n"] += 1
        calls["rows"] += args[0].size(0)

    model.register_forward_pre_hook(count)
    schedule = build_noise_schedule(model.config)
    result: dict[str, float | int | str] = {"arch": arch, "steps": steps, "length": length, "batch": batch,
                                            "threads": torch.get_num_threads()}
    outputs = {}
    for use_cache in (False, True):
        predictor = MdlmPredictor(model, tokenizer, MdlmSamplerConfig(max_new_tokens=length, num_steps=steps,
                                                                      use_cache=use_cache), schedule=schedule)
        calls.update(n=0, rows=0)
        start = time.perf_counter()
        outputs[use_cache] = predictor.unconditional(batch, length, generator=torch.Generator().manual_seed(seed))
        name = "cached" if use_cache else "uncached"
        result[f"{name}_s"] = round(time.perf_counter() - start, 3)
        result[f"{name}_forwards"] = calls["n"]
        result[f"{name}_row_forwards"] = calls["rows"]
    result["speedup"] = round(float(result["uncached_s"]) / float(result["cached_s"]), 2)
    result["same_tokens"] = str(bool(torch.equal(outputs[False], outputs[True])))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="mdlm_star")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None)
    args = p.parse_args()
    rows = [run(args.arch, args.steps, args.length, b, args.seed) for b in args.batch]
    keys = list(rows[0])
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(str(r[k]) for k in keys))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
