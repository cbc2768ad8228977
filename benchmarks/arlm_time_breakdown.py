"""Where an ARLM training step and a KV-cache decoding step spend their time on this machine.

    python benchmarks/arlm_time_breakdown.py

Times, interleaved and as medians, the bench's GPT-2-shaped ARLM (`benchmarks.bench hf_gpt2`
and `generate` shapes) as it is and with one part replaced by a pass-through: the difference is
that part's cost. Training runs with the trainer's CPU kernels (`xlm.nn.cpu.accelerate_training`),
decoding with the predictor's prepacked weights, as the recipes run them. Training step (batch
16 x 256): without the GELU (identity) and without SDPA's attention (the values pass through;
note this also spares the q/k projections' backward).
Decoding (6 x 256, batch 8, 128 new tokens after a 32-token prompt): without SDPA, without the
KV-cache writes, and the same predictor on a width-16 model, whose time is the per-op overhead.
The replaced runs compute something else; they exist only to be timed.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

import xlm.nn.attention as attention_module
import xlm.nn.cpu.gelu_tanh as gelu_tanh_module
import xlm.nn.kv_cache as kv_cache_module
from xlm.models.arlm.collators import ArlmLMCollator
from xlm.models.arlm.config import ArlmConfig
from xlm.models.arlm.factory import create_arlm_model
from xlm.models.arlm.loss import arlm_loss
from xlm.models.arlm.predictor import ArlmPredictor, ArlmSamplerConfig
from xlm.nn.cpu import accelerate_training
from benchmarks.bench import TOKENIZER, _NoStopTokenizer
from xlm.recipes.config import OptimConfig
from xlm.recipes.optim import build_adamw


class _Functional:
    """torch.nn.functional with some functions swapped, for one module's `F`."""

    def __init__(self, **swaps: Callable) -> None:
        self._swaps = swaps

    def __getattr__(self, name: str):
        return self._swaps.get(name, getattr(F, name))


@contextmanager
def _without(*parts: str) -> Iterator[None]:
    saved = attention_module.F, gelu_tanh_module.gelu_tanh, kv_cache_module.KVCache.update
    if "sdpa" in parts:
        attention_module.F = _Functional(
            scaled_dot_product_attention=lambda q, k, v, **_: v if v.shape == q.shape else q)
    if "gelu" in parts:
        gelu_tanh_module.gelu_tanh = lambda x: x  # what CompiledGeluFeedForward calls
    if "kv_writes" in parts:
        kv_cache_module.KVCache.update = lambda self, layer, k, v: (k, v)
    try:
        yield
    finally:
        attention_module.F, gelu_tanh_module.gelu_tanh, kv_cache_module.KVCache.update = saved


def _gpt2_shaped(dim: int, layers: int, heads: int, max_len: int) -> torch.nn.Module:
    return create_arlm_model(ArlmConfig(vocab_size=1024, model_dim=dim, num_layers=layers, num_heads=heads,
                                        ffn_dim=4 * dim, max_seq_len=max_len, pos_encoding="learned",
                                        norm="layernorm", activation="gelu_tanh", bias=True, tie_embeddings=True))


def _medians(variants: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    for run in variants.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def training_step(dim: int, layers: int, heads: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = _gpt2_shaped(dim, layers, heads, 256)
    accelerate_training(model)
    ids = torch.randint(0, 1024, (16, 256))
    batch = ArlmLMCollator(TOKENIZER, max_len=256)([{"input_ids": row} for row in ids.tolist()])
    optim = build_adamw(model.parameters(), OptimConfig(lr=1e-4), device=torch.device("cpu"))

    def step(*parts: str) -> Callable[[], None]:
        def run() -> None:
            with _without(*parts):
                arlm_loss(model, batch)["loss"].backward()
            optim.step()
            optim.zero_grad(set_to_none=True)
        return run

    return _medians({"full": step(), "without gelu": step("gelu"), "without sdpa": step("sdpa"),
                     "without both": step("gelu", "sdpa")}, repeats=10)


def decoding_step() -> dict[str, float]:
    def predictor(dim: int) -> ArlmPredictor:
        torch.manual_seed(0)
        return ArlmPredictor(_gpt2_shaped(dim, 6, 8, 512).eval(), _NoStopTokenizer(),
                             ArlmSamplerConfig(max_new_tokens=128, strategy="greedy"))

    prompt = torch.randint(0, 1024, (8, 32))
    mask = torch.ones_like(prompt, dtype=torch.bool)
    full, tiny = predictor(256), predictor(16)

    def generate(pred: ArlmPredictor, *parts: str) -> Callable[[], None]:
        def run() -> None:
            with _without(*parts):
                pred.generate(prompt, mask)
        return run

    seconds = _medians({"full": generate(full), "without sdpa": generate(full, "sdpa"),
                        "without sdpa and kv writes": generate(full, "sdpa", "kv_writes"),
                        "width 16 (overhead)": generate(tiny)}, repeats=6)
    return {name: s / 128 for name, s in seconds.items()}


def main() -> None:
    for dim, layers, heads in ((128, 4, 4), (256, 6, 8)):
        times = training_step(dim, layers, heads)
        print(f"training step {layers}x{dim}, batch 16x256 (ms): "
              + ", ".join(f"{name} {1000 * t:.1f}" for name, t in times.items()))
    times = decoding_step()
    print("decoding 6x256, batch 8 (ms per token): " + ", ".join(f"{name} {1000 * t:.2f}" for name, t in times.items()))


if __name__ == "__main__":
    main()
