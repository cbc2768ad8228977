"""Stand-ins for xlm-core checkpoints (github.com/dhruvdcoder/xlm-core), shared by the families' legacy tests.

xlm-core needs Lightning, Hydra and its own package, so the tests build random state dicts with its exact key names,
shapes and order, write them the two ways xlm-core does (a Lightning `.ckpt` of its `Harness`, a hub export of
`PyTorchModelHubMixin`), and compute its forward here. ARLM, MLM and ILM share `RotaryTransformerLayer`
(`src/xlm/modules/rotary_transformer.py`): pre-LN with LayerNorm biases, fused bias-free q|k|v chunked along the
output, bias-free `o_proj`, NeoX half-split rotary (base 10000) over the first `rotary_emb_dim` dims of each head, an
MLP with biases (ReLU or GELU-tanh). Each family's test adds its own output layer and its own assertions. MDLM's
`MDLMModel` (`xlm-models/mdlm/model_mdlm.py`) is built from `src/xlm/modules/ddit_simple.py` instead: the same
attention inside DDiTLayers conditioned on the noise through adaLN (`ddit_state`, `ddit_forward`).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

#: the buffers of xlm-core's networks: no EMA shadow, and a hub export keeps only the first layer's rotary one
BUFFER_SUFFIXES = ("rotary_emb.inv_freq", "sigma_map.freqs")


def inv_freq(rotary: int) -> Tensor:
    """xlm-core's RotaryEmbedding.inv_freq over `rotary` dims, base 10000."""
    return 1.0 / (10000 ** (torch.arange(0, rotary, 2).float() / rotary))


def random_tensors(seed: int) -> Callable[..., Tensor]:
    """`r(*shape)`: small random values from a generator of its own, so every key of a state dict differs."""
    generator = torch.Generator().manual_seed(seed)
    return lambda *shape: torch.randn(*shape, generator=generator) * 0.2


def rotary_transformer_state(r: Callable[..., Tensor], *, vocab: int, dim: int, num_layers: int, ffn_dim: int,
                             rotary: int) -> OrderedDict[str, Tensor]:
    """`embed_tokens` and the `encoder.{i}` RotaryTransformerLayers, as the state dict holds them (keys, shapes,
    order); the rotary module is shared by every layer, so each layer has the buffer's key."""
    s: OrderedDict[str, Tensor] = OrderedDict()
    s["embed_tokens.weight"] = r(vocab, dim)
    for i in range(num_layers):
        p = f"encoder.{i}."
        s[p + "norm1.weight"], s[p + "norm1.bias"] = 1 + r(dim), r(dim)
        s[p + "attn_qkv.weight"] = r(3 * dim, dim)
        s[p + "o_proj.weight"] = r(dim, dim)
        s[p + "norm2.weight"], s[p + "norm2.bias"] = 1 + r(dim), r(dim)
        s[p + "mlp.0.weight"], s[p + "mlp.0.bias"] = r(ffn_dim, dim), r(ffn_dim)
        s[p + "mlp.2.weight"], s[p + "mlp.2.bias"] = r(dim, ffn_dim), r(dim)
        s[p + "rotary_emb.inv_freq"] = inv_freq(rotary)
    return s


def add_output_layer(s: OrderedDict[str, Tensor], r: Callable[..., Tensor], *, vocab: int, dim: int,
                     final_norm: bool = True) -> None:
    """`output_layer`: the final LayerNorm (unless final_layer_without_normalization) and a bias-free linear."""
    if final_norm:
        s["output_layer.norm_final.weight"], s["output_layer.norm_final.bias"] = 1 + r(dim), r(dim)
    s["output_layer.linear.weight"] = r(vocab, dim)


def rotary_attention(s: Mapping[str, Tensor], p: str, h: Tensor, *, allowed: Tensor, positions: Tensor,
                     num_heads: int, rotary: int) -> Tensor:
    """The attention both layer kinds share, on its input `h`: q|k|v = h @ `{p}attn_qkv`, chunked along the output;
    NeoX half-split rotary over the first `rotary` dims of each head at `positions`; softmax over the keys `allowed`
    (batch, query or 1, key); then `{p}o_proj`."""
    batch, seq, dim = h.shape
    head = dim // num_heads
    angles = positions[..., None].float() * inv_freq(rotary)
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]

    def rope(t: Tensor) -> Tensor:
        part, rest = t[..., :rotary], t[..., rotary:]
        t1, t2 = part.chunk(2, dim=-1)
        return torch.cat([t1 * cos - t2 * sin, t2 * cos + t1 * sin, rest], dim=-1)

    q, k, v = (t.view(batch, seq, num_heads, head).transpose(1, 2)
               for t in (h @ s[p + "attn_qkv.weight"].T).chunk(3, -1))
    scores = rope(q) @ rope(k).transpose(-1, -2) / math.sqrt(head)
    attended = scores.masked_fill(~allowed[:, None], float("-inf")).softmax(-1) @ v
    return attended.transpose(1, 2).reshape(batch, seq, dim) @ s[p + "o_proj.weight"].T


def mlp(s: Mapping[str, Tensor], p: str, h: Tensor, activation: str) -> Tensor:
    """`{p}mlp`: Linear, ReLU or GELU-tanh (xlm-core's "gelu"), Linear, with biases."""
    h = F.linear(h, s[p + "mlp.0.weight"], s[p + "mlp.0.bias"])
    h = F.relu(h) if activation == "relu" else F.gelu(h, approximate="tanh")
    return F.linear(h, s[p + "mlp.2.weight"], s[p + "mlp.2.bias"])


def rotary_transformer_forward(s: Mapping[str, Tensor], ids: Tensor, *, allowed: Tensor, positions: Tensor,
                               num_layers: int, num_heads: int, rotary: int, activation: str = "relu",
                               eps: float = 1e-5, padding_idx: int | None = None) -> Tensor:
    """The hidden states after the RotaryTransformerLayers (before the output layer). `allowed` (batch, query or 1,
    key) says which keys each query attends to; `positions` (batch, seq) are the rotary positions; `padding_idx` is
    the embedding's (its row gets no gradient)."""
    x = F.embedding(ids, s["embed_tokens.weight"], padding_idx=padding_idx)
    dim = x.shape[-1]
    for i in range(num_layers):
        p = f"encoder.{i}."
        h = F.layer_norm(x, (dim,), s[p + "norm1.weight"], s[p + "norm1.bias"], eps)
        x = x + rotary_attention(s, p, h, allowed=allowed, positions=positions, num_heads=num_heads, rotary=rotary)
        h = F.layer_norm(x, (dim,), s[p + "norm2.weight"], s[p + "norm2.bias"], eps)
        x = x + mlp(s, p, h, activation)
    return x


# -- MDLM: MDLMModel's DDiT (src/xlm/modules/ddit_simple.py) ------------------------------------------------------

def sigma_freqs(features: int = 256) -> Tensor:
    """TimestepEmbedder's `freqs` buffer: exp(-log(10000) k / half), k < half = features / 2."""
    half = features // 2
    return torch.exp(-math.log(10000) * torch.arange(start=0, end=half) / half)


def ddit_state(r: Callable[..., Tensor], *, vocab: int, dim: int, num_layers: int, ffn_dim: int, cond: int,
               rotary: int, sigma_features: int = 256) -> OrderedDict[str, Tensor]:
    """MDLMModel.state_dict(): keys, shapes and order (a module's own buffers before its children; the rotary module,
    set on each DDiTLayer after its construction, after the layer's weights)."""
    s: OrderedDict[str, Tensor] = OrderedDict()
    s["embed_tokens.weight"] = r(vocab, dim)
    s["sigma_map.freqs"] = sigma_freqs(sigma_features)
    s["sigma_map.mlp.0.weight"], s["sigma_map.mlp.0.bias"] = r(cond, sigma_features), r(cond)
    s["sigma_map.mlp.2.weight"], s["sigma_map.mlp.2.bias"] = r(cond, cond), r(cond)
    for i in range(num_layers):
        p = f"encoder.{i}."
        s[p + "norm1.weight"] = 1 + r(dim)
        s[p + "attn_qkv.weight"] = r(3 * dim, dim)
        s[p + "o_proj.weight"] = r(dim, dim)
        s[p + "norm2.weight"] = 1 + r(dim)
        s[p + "mlp.0.weight"], s[p + "mlp.0.bias"] = r(ffn_dim, dim), r(ffn_dim)
        s[p + "mlp.2.weight"], s[p + "mlp.2.bias"] = r(dim, ffn_dim), r(dim)
        s[p + "ada_ln_modulations.modulation.weight"] = r(6 * dim, cond)
        s[p + "ada_ln_modulations.modulation.bias"] = r(6 * dim)
        s[p + "rotary_emb.inv_freq"] = inv_freq(rotary)
    s["output_layer.norm_final.weight"] = 1 + r(dim)
    s["output_layer.linear.weight"] = r(vocab, dim)
    s["output_layer.adaLN_modulation.modulation.weight"] = r(2 * dim, cond)
    s["output_layer.adaLN_modulation.modulation.bias"] = r(2 * dim)
    return s


def ddit_forward(s: Mapping[str, Tensor], ids: Tensor, noise: Tensor, *, attention_mask: Tensor, num_layers: int,
                 num_heads: int, rotary: int, activation: str = "relu", eps: float = 1e-5,
                 positions: Tensor | None = None) -> Tensor:
    """MDLMModel.forward's logits (eval mode): c = silu(sigma_map(noise)); in each DDiTLayer the attention reads
    x' = modulate(norm1(x)) (LayerNorm without bias, then adaLN) and its gated output is added to x', not to x,
    while the MLP branch is added to its own input; the final layer modulates its norm and projects without a bias.
    Positions default to the count of real tokens before each one, as MDLMModel's."""
    dim = s["embed_tokens.weight"].shape[1]
    if positions is None:
        positions = (attention_mask.long().cumsum(1) - 1).clamp(min=0)

    def modulate(x: Tensor, weight: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
        return F.layer_norm(x, (dim,), eps=eps) * weight * (1 + scale) + shift

    args = noise[:, None].float() * s["sigma_map.freqs"][None]
    c = F.linear(torch.cat([args.cos(), args.sin()], -1), s["sigma_map.mlp.0.weight"], s["sigma_map.mlp.0.bias"])
    c = F.silu(F.linear(F.silu(c), s["sigma_map.mlp.2.weight"], s["sigma_map.mlp.2.bias"]))
    x = s["embed_tokens.weight"][ids]
    for i in range(num_layers):
        p = f"encoder.{i}."
        mods = F.linear(c, s[p + "ada_ln_modulations.modulation.weight"], s[p + "ada_ln_modulations.modulation.bias"])
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mods[:, None].chunk(6, dim=2)
        x = modulate(x, s[p + "norm1.weight"], shift_a, scale_a)
        attended = rotary_attention(s, p, x, allowed=attention_mask[:, None, :], positions=positions,
                                    num_heads=num_heads, rotary=rotary)
        x = attended * gate_a + x
        x = mlp(s, p, modulate(x, s[p + "norm2.weight"], shift_m, scale_m), activation) * gate_m + x
    o = "output_layer."
    shift, scale = F.linear(c, s[o + "adaLN_modulation.modulation.weight"],
                            s[o + "adaLN_modulation.modulation.bias"])[:, None].chunk(2, dim=2)
    return modulate(x, s[o + "norm_final.weight"], shift, scale) @ s[o + "linear.weight"].T


def randomize_for_xlm_core_(model: nn.Module) -> nn.Module:
    """Random parameters (from torch's global generator), so that every key matters."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.1)
    return model


def assert_round_trip(model: nn.Module, there: Callable[..., Any], back: Callable[..., Any]) -> Any:
    """`back(*there(state, config))` gives the model's config and state again, bitwise; returns `there`'s result."""
    state = model.state_dict()
    written = there(state, model.config)
    again = back(written.state, written.config)
    assert again.config == model.config
    assert set(again.state) == set(state)
    assert all(torch.equal(again.state[k], v) for k, v in state.items())
    return written


def parameter_keys(state: Mapping[str, Tensor]) -> list[str]:
    """The network's parameters in state-dict order: the order of torch_ema's shadow_params."""
    return [k for k in state if not k.endswith(BUFFER_SUFFIXES)]


def ema_entry(averaged: Mapping[str, Tensor], *, decay: float = 0.9999, num_updates: int = 1,
              **extra: Any) -> dict[str, Any]:
    """The `ema` entry xlm-core's EMA callback (torch_ema) saves, with `averaged`'s parameters as the shadow."""
    shadow = [averaged[k] for k in parameter_keys(averaged)]
    return {"decay": decay, "num_updates": num_updates, "shadow_params": shadow, **extra}


def hub_layout(state: Mapping[str, Tensor]) -> list[str]:
    """The keys of xlm-core's hub export: a tensor shared between modules is kept once, under its first name, so of
    the rotary buffer only `encoder.0.rotary_emb.inv_freq` remains."""
    return [k for k in state if not (k.endswith("rotary_emb.inv_freq") and not k.startswith("encoder.0."))]


def write_hub_export(directory: Path, state: Mapping[str, Tensor], config: Mapping[str, Any]) -> Path:
    """`push_to_hub`'s files: model.safetensors (`hub_layout`) and config.json (the constructor arguments)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: state[k] for k in hub_layout(state)}, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(dict(config)))
    return directory


def write_lightning_checkpoint(path: Path, state: Mapping[str, Tensor], *, hyper: Any, compiled: bool = False,
                               rotary_tables: Sequence[str] = (), max_length: int | None = None,
                               predictor_copy: bool = False, other_state: Mapping[str, Tensor] | None = None,
                               **entries: Any) -> Path:
    """A Lightning .ckpt of xlm-core's Harness holding the network `state` as `model.*`, with what runs of other
    setups add: `_orig_mod.` under torch.compile (`compiled`), the rotary `sin`/`cos` tables older runs kept
    persistent (`rotary_tables`, over `max_length` + 1 positions), the predictor's `predictor.model.*` duplicate of
    every weight (`predictor_copy`), the noise schedule's buffers (`other_state`, first). `entries` are the
    checkpoint's other top-level entries (`ema`, `global_step`, ...)."""
    inner = "model._orig_mod." if compiled else "model."
    full: OrderedDict[str, Tensor] = OrderedDict(other_state or {})
    for key, tensor in state.items():
        full[inner + key] = tensor
        if key.endswith("rotary_emb.inv_freq") and rotary_tables:
            assert max_length is not None, "rotary tables need max_length"
            for table in rotary_tables:
                fill = torch.zeros if table == "sin" else torch.ones
                full[inner + key.replace("inv_freq", table)] = fill(max_length + 1, tensor.shape[0])
    if predictor_copy:
        full.update(("predictor.model." + k, v) for k, v in state.items())
    torch.save({"state_dict": full, "hyper_parameters": hyper, **entries}, path)
    return path


# -- xlm-core's objectives (xlm-models/ilm/loss_ilm.py, mlm/loss_mlm.py) on the batches its collators build ------

def ilm_seq2seq_batch(prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
                      drops: Sequence[Sequence[int]], *, pad: int, cls: int, bos: int, vocab: int,
                      block_size: int) -> dict[str, Tensor]:
    """ILMSeq2SeqCollator's batch for these drops (`drops[b]`: indices into `targets[b]`): `[PAD]... [CLS] prompt`
    left-padded (`cls_position` after the padding), then `[BOS] kept [PAD]...` right-padded to `block_size`;
    `target_ids` (dense: batch, seq, vocab) counts each dropped token at the column of the kept token (or [BOS])
    before it, and `n_drops` (batch, seq) is their number there."""
    width = 1 + max(len(p) for p in prompts)
    ids, attended, cls_position = [], [], []
    target = torch.zeros(len(prompts), width + block_size, vocab)
    for b, (prompt, tokens, dropped) in enumerate(zip(prompts, targets, drops)):
        left = width - 1 - len(prompt)
        suffix = [bos] + [t for j, t in enumerate(tokens) if j not in dropped]
        right = block_size - len(suffix)
        ids.append([pad] * left + [cls, *prompt] + suffix + [pad] * right)
        attended.append([False] * left + [True] * (1 + len(prompt) + len(suffix)) + [False] * right)
        cls_position.append(left)
        gap = width  # the [BOS] column
        for j, token in enumerate(tokens):
            if j in dropped:
                target[b, gap, token] += 1
            else:
                gap += 1
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(attended), "target_ids": target,
            "n_drops": target.sum(-1), "cls_position": torch.tensor(cls_position)}


def ilm_loss(logits: Tensor, length_logits: Tensor, batch: Mapping[str, Tensor], *,
             stopping_class_weight: float | None = None, length_loss_weight: float = 1.0) -> Tensor:
    """ILMLossWithMaskedCE(length_loss="binary_ce") on the model's outputs: the cross-entropy of one softmax over every
    (column, token) pair, every column but the attended ones other than [CLS] set to the dtype's minimum, against
    the dropped tokens' counts over their number; plus the stopping cross-entropy with class weights
    [w, 1 - w] (no renormalisation: reduction="none"); the mean over rows of their sum."""
    rows = logits.size(0)
    total = batch["n_drops"].sum(-1)
    p_target = batch["target_ids"] / (total[:, None, None] + 1e-9)
    excluded = batch["attention_mask"].scatter(-1, batch["cls_position"][:, None], False).logical_not()
    masked = logits.masked_fill(excluded[..., None], torch.finfo(logits.dtype).min)
    ce = F.cross_entropy(masked.reshape(rows, -1), p_target.reshape(rows, -1), reduction="none")
    weight = None if stopping_class_weight is None else torch.tensor([stopping_class_weight,
                                                                      1.0 - stopping_class_weight])
    stop = F.cross_entropy(length_logits, (total > 0).long(), weight=weight, reduction="none")
    return (ce + length_loss_weight * stop).mean()


def mlm_seq2seq_batch(prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
                      masked: Sequence[Sequence[int]], *, pad: int, mask: int, bos: int, eos: int,
                      width: int) -> dict[str, Tensor]:
    """MLMSeq2SeqTrainCollator's batch (loss_on_padding=True, its default) with `masked[b]` the masked columns of row
    b (in the target part): `prompt [BOS] target [EOS]` right-padded with [PAD] to `width`, every column attended and
    in the loss where masked, the [PAD]s included."""
    rows = [list(p) + [bos] + list(t) + [eos] for p, t in zip(prompts, targets)]
    target_ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows])
    input_ids = target_ids.clone()
    for b, columns in enumerate(masked):
        assert all(c > len(prompts[b]) for c in columns), "the prompt and [BOS] are never masked"
        input_ids[b, list(columns)] = mask
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids, dtype=torch.bool),
            "target_ids": target_ids}


def mlm_loss(logits: Tensor, batch: Mapping[str, Tensor], *, mask: int, use_num_masked_factor: bool = False) -> Tensor:
    """MLMLoss.loss_fn on the model's logits: the cross-entropy at the [MASK] inputs, times 1 / (the row's [MASK]s +
    1) with use_num_masked_factor, meaned over them. The factor is applied as written there (`ce * factor`, a
    (batch,) factor on (batch, seq)), which broadcasts along the sequence: the per-row weight for a single row."""
    input_ids = batch["input_ids"]
    ignore = input_ids != mask
    targets = batch["target_ids"].masked_fill(ignore, -100)
    ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none", ignore_index=-100)
    if use_num_masked_factor:
        ce = ce * (1 / ((input_ids == mask).sum(dim=-1) + 1))
    keep = ~ignore.flatten()
    return ce.flatten().masked_fill(~keep, 0.0).sum() / (keep.sum() + 1e-9)
