"""Peak training memory of each family and of HF GPT-2 at one shape (6 layers x 512 wide, GPT-2's
vocabulary), with and without activation checkpointing.

    python -m benchmarks.bench memory [--quick]            (CPU)
    python -m benchmarks.gpu memory                        (CUDA, bf16 autocast)

What is measured: two training steps (AdamW, so the second step's peak holds the weights, the
optimizer state, the gradients and the activations), as the trainer runs them on that device
(CPU: its CPU kernels, fp32; CUDA: bf16 autocast). On CUDA, `torch.cuda.max_memory_allocated`
over the steps, minus what was allocated before the model was built. On CPU, where no allocator
counts for us, each configuration runs in a fresh process: its peak resident set (VmHWM)
minus its resident set before the model was built, so libraries and the interpreter are left
out; allocator caching counts, as it does for any CPU training process.
"""

from __future__ import annotations

import gc
import json
import resource
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

FAMILIES = ("arlm", "mlm", "mdlm", "ilm", "hf_gpt2")
VOCAB = 50257  # GPT-2's: the logits are a large part of a small model's activations


@dataclass(frozen=True)
class MemoryCase:
    family: str  # an xlm family, or "hf_gpt2"
    checkpointing: bool
    device: str
    batch: int
    seq: int
    layers: int = 6
    dim: int = 512
    vocab: int = VOCAB


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux carries the parent's
    peak through fork and exec into it, so a child of a large process would report the parent's."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _build_step(case: MemoryCase):
    """(the model, one training step) for `case`, on its device, as the trainer would run it."""
    import xlm
    from benchmarks.bench import TOKENIZER
    from xlm.nn.cpu import accelerate_training
    from xlm.recipes.activation_checkpointing import checkpoint_activations
    from xlm.recipes.config import OptimConfig
    from xlm.recipes.optim import build_adamw

    device = torch.device(case.device)
    heads = case.dim // 64
    torch.manual_seed(0)
    ids = torch.randint(7, len(TOKENIZER), (case.batch, case.seq))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    if case.family == "hf_gpt2":
        import transformers

        config = transformers.GPT2Config(vocab_size=case.vocab, n_positions=case.seq, n_embd=case.dim,
                                         n_layer=case.layers, n_head=heads, resid_pdrop=0.0, embd_pdrop=0.0,
                                         attn_pdrop=0.0, attn_implementation="sdpa", bos_token_id=0, eos_token_id=0)
        model = transformers.GPT2LMHeadModel(config).to(device)
        if case.checkpointing and hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif case.checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        ids = ids.to(device)

        def loss() -> torch.Tensor:
            return model(input_ids=ids, labels=ids).loss
    else:
        family = xlm.get_family(case.family)
        fields = family.config_class.__dataclass_fields__
        overrides: dict[str, Any] = {"vocab_size": case.vocab, "model_dim": case.dim, "num_layers": case.layers,
                                     "num_heads": heads, "max_seq_len": case.seq + 2}  # ILM adds [CLS], [BOS]
        if "ffn_dim" in fields:
            overrides["ffn_dim"] = 4 * case.dim
        if "cond_dim" in fields:
            overrides["cond_dim"] = 128
        if case.family == "arlm":  # GPT-2's layout, as the hf_gpt2 section compares it
            overrides.update(pos_encoding="learned", norm="layernorm", activation="gelu_tanh", bias=True,
                             tie_embeddings=True)
        model = xlm.create_model(f"{case.family}_star", **overrides).to(device)
        accelerate_training(model)  # the trainer's CPU kernels (a no-op on CUDA)
        if case.checkpointing:
            checkpoint_activations(model)
        unit = family.unit_factory(model, TOKENIZER, family.sampler_config_class())
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                 for k, v in unit.collate_train([{"input_ids": row} for row in ids.tolist()]).items()}

        def loss() -> torch.Tensor:
            return unit.loss(model, batch)["loss"]

    optim = build_adamw(model.parameters(), OptimConfig(lr=1e-4), device=device)

    def step() -> None:
        if autocast is None:
            value = loss()
        else:
            with autocast:
                value = loss()
        value.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    return model, step


def _load_code(case: MemoryCase) -> None:
    """Imports and compiles (the CPU kernels' GELU) before the baseline: code is not training memory."""
    from transformers import GPT2LMHeadModel  # noqa: F401  (transformers imports its models lazily)

    import xlm
    from xlm.nn.cpu.gelu_tanh import compiled_gelu_tanh

    if case.family != "hf_gpt2":
        xlm.get_family(case.family)
        compiled_gelu_tanh()


def measure(case: MemoryCase, steps: int = 2) -> int:
    """Peak bytes a training step of `case` holds (see the module docstring), in this process."""
    if case.device.startswith("cuda"):
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        model, step = _build_step(case)
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del model, step
        return peak
    _load_code(case)
    before = _rss_bytes()
    _, step = _build_step(case)
    for _ in range(steps):
        step()
    return _peak_rss_bytes() - before


def _measure_in_fresh_process(case: MemoryCase) -> int:
    out = subprocess.run([sys.executable, "-m", "benchmarks.memory", json.dumps(asdict(case))],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory case {case} failed:\n{out.stderr[-2000:]}")
    return int(out.stdout.strip().splitlines()[-1])


def bench_memory(quick: bool, device: str = "cpu", families: Sequence[str] = FAMILIES, *,
                 in_process: bool = False) -> list[dict[str, Any]]:
    """One row per family: peak MiB without and with activation checkpointing, what checkpointing
    saves, and each against HF GPT-2 under the same setting. On CPU each case runs in a fresh
    process unless `in_process` (a smoke run: this process's earlier peaks hide later ones)."""
    batch, seq = (2, 64) if quick else (16, 1024) if device.startswith("cuda") else (4, 256)
    vocab = 4096 if quick else VOCAB
    peaks: dict[tuple[str, bool], int] = {}
    for family in families:
        for checkpointing in (False, True):
            case = MemoryCase(family, checkpointing, device, batch, seq, vocab=vocab)
            fresh = not in_process and not device.startswith("cuda")
            peaks[family, checkpointing] = _measure_in_fresh_process(case) if fresh else measure(case)
    rows = []
    for family in families:
        plain, ckpt = peaks[family, False], peaks[family, True]
        row: dict[str, Any] = {"family": family, "shape": f"6x512 vocab {vocab}", "batch": f"{batch}x{seq}",
                               "device": device, "peak_mib": round(plain / 2**20, 1),
                               "peak_mib_checkpointed": round(ckpt / 2**20, 1),
                               "checkpointed_over_plain": round(ckpt / plain, 2)}
        if "hf_gpt2" in families:
            row["over_hf_gpt2"] = round(plain / peaks["hf_gpt2", False], 2)
            row["over_hf_gpt2_checkpointed"] = round(ckpt / peaks["hf_gpt2", True], 2)
        rows.append(row)
    return rows


if __name__ == "__main__":  # one case, in a fresh process: prints its peak bytes
    print(measure(MemoryCase(**json.loads(sys.argv[1]))))
