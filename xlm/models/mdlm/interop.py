"""Checkpoint converters for MDLM: the reference DiT of kuleshov-group/mdlm and xlm-core's DDiT, both ways.

    config, state = MDLM_REFERENCE("path/to/mdlm-owt")          # the HF repo: config.json + model.safetensors
    config, state = MDLM_REFERENCE("path/to/last.ckpt")         # a Lightning checkpoint (EMA weights)
    converted = convert_mdlm_reference(state, ref_config)        # in memory

Reference layout (`backbone.` + the module tree of the reference's `models/dit.py`):

    backbone.vocab_embed.embedding                 (vocab, hidden)          -> vocab_embed.weight
    backbone.sigma_map.mlp.{0,2}.{weight,bias}     256 -> cond -> cond      -> sigma_map.mlp.{0,2}.*
    backbone.rotary_emb.inv_freq                   buffer, recomputed       -> dropped (checked)
    backbone.blocks.N.norm1.weight / norm2.weight  weight-only LayerNorm    -> blocks.N.norm1/norm2.weight
    backbone.blocks.N.attn_qkv.weight              (3*hidden, hidden) q|k|v -> blocks.N.attn_qkv.weight
    backbone.blocks.N.attn_out.weight              no bias                  -> blocks.N.attn_out.weight
    backbone.blocks.N.mlp.0 / mlp.2                GELU-tanh MLP, biases    -> blocks.N.mlp.up_proj / down_proj
    backbone.blocks.N.adaLN_modulation             cond -> 6*hidden         -> same name
    backbone.output_layer.{norm_final,linear,adaLN_modulation}              -> same names

Sizes come from the checkpoint's config.json (`hidden_dim`, `n_blocks`, `n_heads`, `cond_dim`,
`model_length`, `vocab_size`, `dropout`, `time_conditioning`; the released file says cond_dim 128,
where the repo's config class defaults to 129) or, for a Lightning `.ckpt`, from its Hydra config
(`model.hidden_size`, `model.n_blocks`, `model.n_heads`, `model.cond_dim`, `model.length`, and
`time_conditioning`), with the vocabulary read off the embedding. The two sizes the reference
hard-codes (256 sinusoidal features of sigma, MLP ratio 4) are read off the weights.

A Lightning checkpoint keeps its EMA as `ema.shadow_params`, a list in the order of
`backbone.parameters()` (then the noise schedule's, none for log-linear); `use_ema=True` (the
default, as the paper evaluates) puts those values under the reference's parameter names.

xlm-core's `MDLMModel` (`xlm-models/mdlm/model_mdlm.py`, layers from `src/xlm/modules/ddit_simple.py`) has
the same parts under other names (`XLM_CORE_KEY_MAP`: embed_tokens -> vocab_embed, encoder.{i}.o_proj ->
blocks.{i}.attn_out, encoder.{i}.ada_ln_modulations.modulation -> blocks.{i}.adaLN_modulation,
output_layer.adaLN_modulation.modulation -> output_layer.adaLN_modulation; the `sigma_map.freqs` and rotary
buffers are checked and dropped), is fed the total noise sigma(t) (time-conditioned), and is read by the
"xlm_core" converter (`read_xlm_core`: Lightning .ckpt with EMA, or hub export). Its block differs from the
reference DiT's, and the MdlmConfig it converts to says how (`_mdlm_from_xlm_core`): `DDiTLayer.forward` adds
the attention branch to the adaLN-modulated, normalised input (`x = modulate(norm1(x)); x = gate * attn(x) + x`,
residual="modulated_input"); its MLP is `dim_feedforward` wide, ReLU by default (or GELU-tanh); its rotary covers
the first `rotary_emb_dim` dims of each head; its vocabulary projection has no bias (output_bias=False); and it
drops attention probabilities at its dropout rate. Writing back (`convert_to_mdlm_xlm_core`) gives its hub
export's config.json and keys, buffers included; a config it cannot hold is refused with every reason
(`xlm_core_export_problems`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from xlm.errors import ConversionError
from xlm.io import read_json_object
from xlm.interop.converter import config_dict, Converted, Converter, require
from xlm.interop.keymap import check_mapped, check_state_dict, KeyMap, Rule
from xlm.interop.probe import CheckpointProbe
from xlm.interop.readers import read_checkpoint, read_hf_dir, to_plain
from xlm.interop.xlm_core import (ROPE_BASE, XlmCoreConfig, check_rotary_buffers, insert_rotary_buffer,
                                  pop_read_record, read_xlm_core, recognises_xlm_core, xlm_core_config)
from xlm.model_bounds import meta_model

from .config import MdlmConfig
from .factory import create_mdlm_model

__all__ = ["CONVERTERS", "MDLM_REFERENCE", "REFERENCE_KEY_MAP", "XLM_CORE", "XLM_CORE_KEY_MAP",
           "convert_mdlm_reference", "convert_mdlm_xlm_core", "convert_to_mdlm_reference", "convert_to_mdlm_xlm_core",
           "mdlm_config_from_reference", "mdlm_reference_config", "read_mdlm_reference", "reference_export_problems",
           "reference_inv_freq", "shows_reference_keys", "xlm_core_export_problems", "xlm_core_mdlm_config",
           "xlm_core_sigma_freqs"]

_B = "backbone."
_MODEL_TYPE = "mdlm"  # the released config.json's (kuleshov-group/mdlm-owt), and what the export writes

#: reference (`backbone.*`) -> MdlmModel (its inverse maps back).
REFERENCE_KEY_MAP = KeyMap([
    Rule(_B + "vocab_embed.embedding", "vocab_embed.weight"),
    Rule(_B + "sigma_map.mlp.{n:[02]}.{p}", "sigma_map.mlp.{n}.{p}"),
    Rule(_B + "blocks.{i}.{norm:norm[12]}.weight", "blocks.{i}.{norm}.weight"),
    Rule(_B + "blocks.{i}.{proj:attn_(qkv|out)}.weight", "blocks.{i}.{proj}.weight"),
    Rule(_B + "blocks.{i}.mlp.0.{p}", "blocks.{i}.mlp.up_proj.{p}"),
    Rule(_B + "blocks.{i}.mlp.2.{p}", "blocks.{i}.mlp.down_proj.{p}"),
    Rule(_B + "blocks.{i}.adaLN_modulation.{p}", "blocks.{i}.adaLN_modulation.{p}"),
    Rule(_B + "output_layer.norm_final.weight", "output_layer.norm_final.weight"),
    Rule(_B + "output_layer.{m:linear|adaLN_modulation}.{p}", "output_layer.{m}.{p}"),
], drop=[_B + "rotary_emb.inv_freq", "noise.{rest:.+}"])

_INV_FREQ = _B + "rotary_emb.inv_freq"
_SIGMA_FREQS = "sigma_map.freqs"  # xlm-core's persistent sinusoid table; ours is recomputed
_NOTES = "__xlm_read_notes__"  # passes what the reader did (EMA, prefixes) on to the converter's report

# what the reference hard-codes: not in its config, so checked on export (and its MLP is 4 * hidden wide)
_REFERENCE_FIXED = {"sigma_embed_dim": 256, "rope_base": 10000.0, "norm_eps": 1e-5, "activation": "gelu_tanh",
                    "residual": "block_input", "output_bias": True, "attention_dropout": 0.0}
_REFERENCE_MLP_RATIO = 4


def reference_inv_freq(head_dim: int, base: float = 10000.0) -> Tensor:
    """The reference's rotary buffer: 1 / base^(2k / head_dim), fp32."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))


def _model_fields(c: Mapping[str, Any]) -> dict[str, Any]:
    """The HF MDLMConfig fields, or a Lightning checkpoint's Hydra config (`model.*`) in their terms."""
    if isinstance(c.get("model"), Mapping):  # Hydra config of the reference repo
        model = c["model"]
        return {"hidden_dim": model.get("hidden_size"), "n_blocks": model.get("n_blocks"),
                "n_heads": model.get("n_heads"), "cond_dim": model.get("cond_dim"),
                "model_length": model.get("length"), "dropout": model.get("dropout", 0.0),
                "time_conditioning": c.get("time_conditioning", model.get("time_conditioning")),
                "vocab_size": c.get("vocab_size")}
    fields = dict(c)
    if fields.get("hidden_dim") is None and fields.get("hidden_size") is not None:
        fields["hidden_dim"] = fields["hidden_size"]
    return fields


def mdlm_config_from_reference(ref_config: Any, state: Mapping[str, Tensor] | None = None) -> MdlmConfig:
    """An MdlmConfig for a reference checkpoint. Sizes come from its config; `state` (reference keys)
    supplies the vocabulary when the config lacks it and the two sizes the reference hard-codes."""
    c = _model_fields(config_dict(ref_config))
    state = state or {}
    embedding = state.get(_B + "vocab_embed.embedding")
    if c.get("vocab_size") is None and embedding is not None:
        c["vocab_size"] = embedding.shape[0]
    require(c, ["vocab_size", "model_length", "hidden_dim", "cond_dim", "n_blocks", "n_heads"],
            where="MDLM reference config")
    if c.get("time_conditioning") is None:
        raise ConversionError("the MDLM reference config does not say whether the model is time-conditioned "
                              "(time_conditioning); the released mdlm-owt is not")
    dim = c["hidden_dim"]
    sigma_in = state.get(_B + "sigma_map.mlp.0.weight")
    mlp_in = state.get(_B + "blocks.0.mlp.0.weight")
    fixed = _REFERENCE_FIXED
    return MdlmConfig(vocab_size=c["vocab_size"], max_seq_len=c["model_length"], model_dim=dim,
                      num_layers=c["n_blocks"], num_heads=c["n_heads"], cond_dim=c["cond_dim"],
                      mlp_ratio=mlp_in.shape[0] // dim if mlp_in is not None else _REFERENCE_MLP_RATIO,
                      sigma_embed_dim=sigma_in.shape[1] if sigma_in is not None else fixed["sigma_embed_dim"],
                      rope_base=fixed["rope_base"], norm_eps=fixed["norm_eps"],
                      dropout=float(c.get("dropout") or 0.0), time_conditioning=bool(c["time_conditioning"]))


def reference_export_problems(config: MdlmConfig) -> list[str]:
    """Why the reference DiT cannot hold this config ([] = it can): it hard-codes these sizes and choices."""
    problems = [f"{name}={getattr(config, name)!r} (the reference fixes {value!r})"
                for name, value in _REFERENCE_FIXED.items() if getattr(config, name) != value]
    if config.hidden_ffn_dim != _REFERENCE_MLP_RATIO * config.model_dim:
        problems.append(f"an MLP {config.hidden_ffn_dim} wide (the reference's is {_REFERENCE_MLP_RATIO} * hidden_dim "
                        f"= {_REFERENCE_MLP_RATIO * config.model_dim})")
    if config.rotary_dim not in (None, config.head_dim):
        problems.append(f"rotary_dim={config.rotary_dim} (the reference rotates whole {config.head_dim}-dim heads)")
    return problems


def mdlm_reference_config(config: MdlmConfig) -> dict[str, Any]:
    """The config.json (HF MDLMConfig fields) of the reference model equal in function to `config`."""
    problems = reference_export_problems(config)
    if problems:
        raise ConversionError(f"this MDLM config has no reference-DiT equivalent: {'; '.join(problems)}")
    return {"model_type": _MODEL_TYPE, "architectures": ["MDLM"], "vocab_size": config.vocab_size,
            "model_length": config.max_seq_len, "hidden_dim": config.model_dim, "cond_dim": config.cond_dim,
            "n_blocks": config.num_layers, "n_heads": config.num_heads, "dropout": config.dropout,
            "time_conditioning": config.time_conditioning}


def _normalise_keys(state: Mapping[str, Tensor], notes: list[str]) -> dict[str, Tensor]:
    state = dict(state)
    if any("_orig_mod." in k for k in state):
        state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}
        notes.append("removed torch.compile's '_orig_mod.' from keys")
    if state and not any(k.startswith(_B) for k in state):
        state = {f"{_B}{k}": v for k, v in state.items()}
        notes.append("keys had no 'backbone.' prefix (a bare DIT state dict); added it")
    return state


def convert_mdlm_reference(state: Mapping[str, Tensor], ref_config: Any, *,
                           source: str | None = None) -> Converted:
    """Reference DiT (`backbone.*`) -> (MdlmConfig, MdlmModel state dict)."""
    ref = config_dict(ref_config)
    notes = list(ref.pop(_NOTES, []))
    state = _normalise_keys(state, notes)
    config = mdlm_config_from_reference(ref, state)
    inv_freq = state.get(_INV_FREQ)
    if inv_freq is not None:
        expected = len(range(0, config.head_dim, 2))  # compared before the table is built: head_dim may be absurd
        if inv_freq.shape != (expected,) or not torch.allclose(
                inv_freq.float(), reference_inv_freq(config.head_dim, config.rope_base), rtol=1e-4):
            raise ConversionError(f"{_INV_FREQ} does not match rotary embeddings over head_dim={config.head_dim} with "
                                  f"base {config.rope_base}; the checkpoint's n_heads or rotary base differ",
                                  source=source)
    result = REFERENCE_KEY_MAP.apply(state, source=source)
    check_mapped(result, meta_model(create_mdlm_model, config, tensors=len(state), where=source), source=source)
    return Converted(config, result.state, dropped=result.dropped, notes=notes, source=source)


def convert_to_mdlm_reference(state: Mapping[str, Tensor], config: MdlmConfig) -> Converted:
    """MdlmModel state dict -> (reference config.json dict, `backbone.*` state dict with the rotary buffer)."""
    ref_config = mdlm_reference_config(config)
    check_state_dict(state, create_mdlm_model(config, device="meta"), target="the MDLM config")
    result = REFERENCE_KEY_MAP.inverse().apply(state)
    if result.unmatched or result.incomplete:
        raise ConversionError("keys with no place in the reference layout", unexpected=result.unmatched)
    out: dict[str, Tensor] = {}
    for key, tensor in result.state.items():  # the rotary buffer sits where the reference registers it
        if key.startswith(_B + "blocks.") and _INV_FREQ not in out:
            out[_INV_FREQ] = reference_inv_freq(config.head_dim, config.rope_base)
        out[key] = tensor.contiguous()
    return Converted(ref_config, out)


def _reference_parameter_order(config: MdlmConfig) -> list[str]:
    """The reference's `backbone.parameters()` order: ours is the same module tree, mapped back."""
    model = create_mdlm_model(config, device="meta")
    names = [name for name, _ in model.named_parameters()]
    inverse = REFERENCE_KEY_MAP.inverse()
    order = []
    for name in names:
        mapped = inverse.apply({name: torch.empty(0)}).state
        order.extend(mapped)
    return order


def _apply_ema(ckpt: Mapping[str, Any], state: dict[str, Tensor], config: MdlmConfig, notes: list[str],
               path: Path) -> dict[str, Tensor]:
    shadow = ckpt["ema"].get("shadow_params") if isinstance(ckpt.get("ema"), Mapping) else None
    if not isinstance(shadow, (list, tuple)):
        raise ConversionError("use_ema=True but the checkpoint has no ema.shadow_params list; pass use_ema=False "
                              "for the raw weights", source=path)
    order = _reference_parameter_order(config)
    if len(shadow) < len(order):
        raise ConversionError(f"ema.shadow_params has {len(shadow)} tensors but the backbone has {len(order)} "
                              f"parameters", source=path)
    bad = [(key, tuple(t.shape), tuple(state[key].shape)) for key, t in zip(order, shadow)
           if key in state and tuple(t.shape) != tuple(state[key].shape)]
    if bad:
        raise ConversionError("ema.shadow_params is not in the backbone's parameter order", wrong_shapes=bad,
                              source=path, target="the raw weights")
    state = dict(state)
    state.update(zip(order, shadow))
    extra = len(shadow) - len(order)
    notes.append(f"EMA weights (ema.shadow_params, decay {ckpt['ema'].get('decay')})"
                 + (f"; {extra} trailing noise-schedule tensor(s) ignored" if extra else ""))
    return state


def read_mdlm_reference(path: str | Path, *, use_ema: bool = True) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(reference config, `backbone.*` state dict) from the HF repo's dir (config.json + weights), a weights
    file with a config.json beside it, or a Lightning `.ckpt` (its Hydra config; EMA weights if `use_ema`)."""
    path = Path(path)
    if path.is_dir():
        return read_hf_dir(path)
    ckpt = read_checkpoint(path)
    if not (isinstance(ckpt, Mapping) and isinstance(ckpt.get("state_dict"), Mapping)):
        return read_hf_dir(path)  # a bare weights file: sizes from config.json beside it
    notes: list[str] = []
    state = _normalise_keys(ckpt["state_dict"], notes)
    hyper = to_plain(ckpt.get("hyper_parameters") or {})
    ref_config = hyper.get("config") if isinstance(hyper, Mapping) else None
    if isinstance(ref_config, Mapping):
        ref_config = to_plain(ref_config, resolve=True)
    if not isinstance(ref_config, Mapping):
        sibling = path.parent / "config.json"
        if not sibling.is_file():
            raise ConversionError("the Lightning checkpoint carries no readable hyper_parameters.config and there is "
                                  "no config.json beside it to give the model's sizes", source=path)
        ref_config = read_json_object(sibling, ConversionError)
    config = mdlm_config_from_reference(ref_config, state)
    if use_ema and ckpt.get("ema") is not None:
        state = _apply_ema(ckpt, state, config, notes, path)
    elif use_ema:
        notes.append("no EMA in the checkpoint: raw weights")
    return {**ref_config, _NOTES: notes}, state


def shows_reference_keys(probe: CheckpointProbe) -> bool:
    """A checkpoint of the reference DiT (a Lightning .ckpt, a weights file, bare or under `backbone.`): its
    embedding is `vocab_embed.embedding`, where MdlmModel's and xlm-core's are `.weight`."""
    return any(k.replace("_orig_mod.", "").removeprefix(_B) == "vocab_embed.embedding" for k in probe.keys)


# -- xlm-core's MDLMModel (DDiT of src/xlm/modules/ddit_simple.py) -------------------------------

#: xlm-core MDLMModel -> MdlmModel (with output_bias=False: its output linear has no bias).
XLM_CORE_KEY_MAP = KeyMap([
    Rule("embed_tokens.weight", "vocab_embed.weight"),
    Rule("sigma_map.mlp.{n:[02]}.{p}", "sigma_map.mlp.{n}.{p}"),
    Rule("encoder.{i}.{norm:norm[12]}.weight", "blocks.{i}.{norm}.weight"),
    Rule("encoder.{i}.attn_qkv.weight", "blocks.{i}.attn_qkv.weight"),
    Rule("encoder.{i}.o_proj.weight", "blocks.{i}.attn_out.weight"),
    Rule("encoder.{i}.mlp.0.{p}", "blocks.{i}.mlp.up_proj.{p}"),
    Rule("encoder.{i}.mlp.2.{p}", "blocks.{i}.mlp.down_proj.{p}"),
    Rule("encoder.{i}.ada_ln_modulations.modulation.{p}", "blocks.{i}.adaLN_modulation.{p}"),
    Rule("output_layer.norm_final.weight", "output_layer.norm_final.weight"),
    Rule("output_layer.linear.weight", "output_layer.linear.weight"),
    Rule("output_layer.adaLN_modulation.modulation.{p}", "output_layer.adaLN_modulation.{p}"),
], drop=["encoder.{i}.rotary_emb.{b:inv_freq|sin|cos}", _SIGMA_FREQS])
_XLM_CORE_CLASSES = ("MDLMModel",)
#: what MDLMModel hard-codes: TimestepEmbedder(d_cond, 256) with max_period 10000, and DDiTLayer's block
_XLM_CORE_FIXED = {"sigma_embed_dim": 256, "residual": "modulated_input", "output_bias": False,
                   "rope_base": ROPE_BASE, "time_conditioning": True}


def xlm_core_sigma_freqs(features: int, max_period: float = 10000.0) -> Tensor:
    """xlm-core's `sigma_map.freqs` buffer: exp(-log(max_period) k / half) for k < half = features / 2."""
    half = features // 2
    return torch.exp(-math.log(max_period) * torch.arange(half) / half)


def _check_sigma_freqs(state: Mapping[str, Tensor], features: int, source: str | None) -> None:
    freqs = state.get(_SIGMA_FREQS)
    if freqs is not None and (freqs.shape != (features // 2,)  # before the table is built: features may be absurd
                              or not torch.allclose(freqs.float(), xlm_core_sigma_freqs(features), rtol=1e-5)):
        raise ConversionError(f"{_SIGMA_FREQS} is not the table of {features} sinusoidal features with period 10000 "
                              f"that MDLMModel builds; the checkpoint's TimestepEmbedder is not xlm-core's",
                              source=source)


def _mdlm_from_xlm_core(xc: XlmCoreConfig, state: Mapping[str, Tensor]) -> MdlmConfig:
    """xlm-core's constructor arguments as an MdlmConfig: its DDiT block, its FFN width and activation, its rotary
    dims, a bias-free output projection, attention dropout at its one rate, always conditioned on the noise."""
    sigma = state.get("sigma_map.mlp.0.weight")
    fixed = _XLM_CORE_FIXED
    return MdlmConfig(vocab_size=xc.num_embeddings, max_seq_len=xc.max_length, model_dim=xc.d_model,
                      num_layers=xc.num_layers, num_heads=xc.nhead, cond_dim=xc.d_cond or xc.d_model // 2,
                      ffn_dim=xc.dim_feedforward, activation=xc.activation_ours, residual=fixed["residual"],
                      rotary_dim=xc.rotary_dim_ours, output_bias=fixed["output_bias"],
                      sigma_embed_dim=int(sigma.shape[1]) if sigma is not None else fixed["sigma_embed_dim"],
                      rope_base=fixed["rope_base"], norm_eps=xc.layer_norm_eps, dropout=xc.dropout,
                      attention_dropout=xc.dropout, time_conditioning=fixed["time_conditioning"])


def convert_mdlm_xlm_core(state: Mapping[str, Tensor], source_config: Any, *, source: str | None = None) -> Converted:
    """xlm-core MDLMModel (its own keys, `model.` already stripped) -> (MdlmConfig, MdlmModel state dict)."""
    config_in, notes, dropped = pop_read_record(source_config)
    xc = xlm_core_config(config_in, state, where=source or "the xlm-core MDLM config", notes=notes,
                         classes=_XLM_CORE_CLASSES)
    check_rotary_buffers(state, xc.rotary_emb_dim, source=source)
    config = _mdlm_from_xlm_core(xc, state)
    _check_sigma_freqs(state, config.sigma_embed_dim, source)
    result = XLM_CORE_KEY_MAP.apply(state, source=source)
    check_mapped(result, meta_model(create_mdlm_model, config, tensors=len(state), where=source), source=source)
    return Converted(config, result.state, dropped=dropped + result.dropped, notes=notes, source=source)


def xlm_core_export_problems(config: MdlmConfig) -> list[str]:
    """Why xlm-core's MDLMModel cannot hold this config ([] = it can): what it hard-codes, its two activations,
    and its one dropout rate for both the residual branches and the attention probabilities."""
    problems = [f"{name}={getattr(config, name)!r} (xlm-core's MDLMModel fixes {value!r})"
                for name, value in _XLM_CORE_FIXED.items() if getattr(config, name) != value]
    if config.activation not in ("relu", "gelu_tanh"):
        problems.append(f"activation={config.activation!r} (xlm-core has relu and gelu_tanh)")
    if config.attention_dropout != config.dropout:
        problems.append(f"attention_dropout={config.attention_dropout} differs from dropout={config.dropout} "
                        f"(xlm-core drops both at its one rate)")
    return problems


def xlm_core_mdlm_config(config: MdlmConfig) -> dict[str, Any]:
    """The config.json (MDLMModel's constructor arguments) equal in function to `config`. `padding_idx` and
    `mask_idx` are left out (the config does not know them; they do not change the network's function)."""
    problems = xlm_core_export_problems(config)
    if problems:
        raise ConversionError(f"this MDLM config has no xlm-core equivalent: {'; '.join(problems)}")
    return {"num_embeddings": config.vocab_size, "d_model": config.model_dim, "num_layers": config.num_layers,
            "nhead": config.num_heads, "dim_feedforward": config.hidden_ffn_dim, "dropout": config.dropout,
            "activation": {"relu": "relu", "gelu_tanh": "gelu"}[config.activation],
            "layer_norm_eps": config.norm_eps, "d_cond": config.cond_dim,
            "rotary_emb_dim": config.rotary_dim or config.head_dim, "max_length": config.max_seq_len,
            "force_flash_attn": False}


def convert_to_mdlm_xlm_core(state: Mapping[str, Tensor], config: MdlmConfig) -> Converted:
    """MdlmModel state dict -> (xlm-core config.json dict, MDLMModel state dict as its hub export writes it: the
    `sigma_map.freqs` buffer before the sigma MLP, the rotary buffer once, after layer 0)."""
    xc_config = xlm_core_mdlm_config(config)
    check_state_dict(state, create_mdlm_model(config, device="meta"), target="the MDLM config")
    result = XLM_CORE_KEY_MAP.inverse().apply(state)
    if result.unmatched or result.incomplete:
        raise ConversionError("keys with no place in the xlm-core layout",
                              unexpected=result.unmatched + result.incomplete)
    out: dict[str, Tensor] = {}
    for key, tensor in result.state.items():
        if key.startswith("sigma_map.") and _SIGMA_FREQS not in out:
            out[_SIGMA_FREQS] = xlm_core_sigma_freqs(config.sigma_embed_dim)
        out[key] = tensor.contiguous()
    return Converted(xc_config, insert_rotary_buffer(out, xc_config["rotary_emb_dim"]))


MDLM_REFERENCE = Converter(name="mdlm_reference",
                           description="kuleshov-group/mdlm DiT (HF repo kuleshov-group/mdlm-owt, Lightning .ckpt)",
                           to_xlm=convert_mdlm_reference, from_xlm=convert_to_mdlm_reference,
                           export_problems=reference_export_problems, read=read_mdlm_reference,
                           hf_model_types=(_MODEL_TYPE,), recognises=shows_reference_keys, needs_config=True)
XLM_CORE = Converter(name="xlm_core",
                     description="xlm-core MDLMModel (DDiT; Lightning .ckpt, EMA when present; or its hub export: "
                                 "model.safetensors + config.json)",
                     to_xlm=convert_mdlm_xlm_core, from_xlm=convert_to_mdlm_xlm_core,
                     export_problems=xlm_core_export_problems, read=read_xlm_core,
                     recognises=recognises_xlm_core(_XLM_CORE_CLASSES), needs_config=True)
CONVERTERS = {"mdlm_reference": MDLM_REFERENCE, "xlm_core": XLM_CORE}
