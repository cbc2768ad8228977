"""Checkpoint converters for ARLM: HF transformers GPT-2 and Llama, and xlm-core's ARLM, both ways.

    config, state = HF_GPT2("path/to/gpt2")                 # an HF model dir (config.json + weights)
    converted = convert_hf_llama(hf_model.state_dict(), hf_model.config)
    hf = convert_to_hf_gpt2(model.state_dict(), model.config)   # .config is a config.json dict
    config, state = XLM_CORE("run/checkpoints/last.ckpt")   # xlm-core Lightning .ckpt (EMA when present)
    raw = convert_arlm_xlm_core(*reversed(read_xlm_core("last.ckpt", use_ema=False)))   # its raw weights

GPT-2 stores its linears as Conv1D, (in, out), with q|k|v fused in `c_attn`: the key map
transposes and splits them. Llama's weights are already laid out for half-split ("NeoX") rotary
embeddings, which is what xlm.nn.RotaryEmbedding computes, so its map is a plain rename; GQA
(`num_key_value_heads`), `rope_theta` and tied or untied heads carry over. Every size comes from
the checkpoint's config.json; a feature our model lacks (rope scaling, cross-attention, ...) is
an error that names it, never a silent approximation.

xlm-core's `RotaryTransformerARLMModel` (`xlm-models/arlm/model_arlm.py`, layers from
`src/xlm/modules/rotary_transformer.py`) is a pre-LN causal decoder: LayerNorm (with bias), fused bias-free
q|k|v (`attn_qkv`, chunked along its output), bias-free `o_proj`, an MLP with biases (ReLU or GELU-tanh),
NeoX half-split rotary with base 10000 over the first `rotary_emb_dim` dims of each head, a final
LayerNorm unless `final_layer_without_normalization`, and an untied bias-free output linear:

    embed_tokens.weight                      -> embed_tokens.weight
    encoder.{i}.norm1 / norm2                -> layers.{i}.attn_norm / ffn_norm
    encoder.{i}.attn_qkv.weight (3d, d)      -> layers.{i}.attn.{q,k,v}_proj.weight   (q|k|v, chunk(3, dim=0))
    encoder.{i}.o_proj.weight                -> layers.{i}.attn.out_proj.weight       (attn_bias=False)
    encoder.{i}.mlp.0 / mlp.2                -> layers.{i}.ffn.up_proj / down_proj
    encoder.{i}.rotary_emb.inv_freq          -> dropped (checked against rotary_emb_dim)
    output_layer.norm_final                  -> final_norm
    output_layer.linear.weight               -> lm_head.proj.weight                    (tie_embeddings=False)

It is trained with positions = cumsum(attention_mask) - 1 and a causal mask, which is what ArlmModel
computes by default. ArlmModel always has a final norm: a checkpoint without one is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from xlm.errors import ConversionError
from xlm.interop.converter import config_dict, Converted, Converter, require
from xlm.interop.keymap import Chain, check_mapped, check_state_dict, KeyMap, Rule, Split, Transpose
from xlm.interop.readers import read_hf_dir
from xlm.interop.xlm_core import (ENCODER_DROP, ENCODER_RULES, ROPE_BASE, XlmCoreConfig, common_export_problems,
                                      constructor_args, convert_from_xlm_core, convert_to_xlm_core, pad_token_id,
                                      read_xlm_core, recognises_xlm_core, xlm_core_config)
from xlm.nn import attention_bias
from xlm.model_bounds import meta_model

from .config import ArlmConfig
from .factory import create_arlm_model

__all__ = ["CONVERTERS", "GPT2_KEY_MAP", "HF_GPT2", "HF_LLAMA", "LLAMA_KEY_MAP", "XLM_CORE", "XLM_CORE_KEY_MAP",
           "arlm_config_from_hf_gpt2", "arlm_config_from_hf_llama", "arlm_config_from_xlm_core",
           "convert_arlm_xlm_core", "convert_hf_gpt2", "convert_hf_llama", "convert_to_arlm_xlm_core",
           "convert_to_hf_gpt2", "convert_to_hf_llama", "gpt2_export_problems", "hf_gpt2_config", "hf_llama_config",
           "llama_export_problems", "xlm_core_arlm_config", "xlm_core_export_problems"]

_QKV = ("layers.{i}.attn.q_proj.{p}", "layers.{i}.attn.k_proj.{p}", "layers.{i}.attn.v_proj.{p}")

#: HF GPT2LMHeadModel -> ArlmModel (its inverse maps back).
GPT2_KEY_MAP = KeyMap([
    Rule("transformer.wte.weight", "embed_tokens.weight"),
    Rule("transformer.wpe.weight", "embed_positions.weight"),
    Rule("transformer.h.{i}.ln_1.{p}", "layers.{i}.attn_norm.{p}"),
    Rule("transformer.h.{i}.attn.c_attn.{p:weight}", _QKV, Chain(Transpose(), Split(dim=0))),
    Rule("transformer.h.{i}.attn.c_attn.{p:bias}", _QKV, Split(dim=0)),
    Rule("transformer.h.{i}.attn.c_proj.{p:weight}", "layers.{i}.attn.out_proj.{p}", Transpose()),
    Rule("transformer.h.{i}.attn.c_proj.{p:bias}", "layers.{i}.attn.out_proj.{p}"),
    Rule("transformer.h.{i}.ln_2.{p}", "layers.{i}.ffn_norm.{p}"),
    Rule("transformer.h.{i}.mlp.c_fc.{p:weight}", "layers.{i}.ffn.up_proj.{p}", Transpose()),
    Rule("transformer.h.{i}.mlp.c_fc.{p:bias}", "layers.{i}.ffn.up_proj.{p}"),
    Rule("transformer.h.{i}.mlp.c_proj.{p:weight}", "layers.{i}.ffn.down_proj.{p}", Transpose()),
    Rule("transformer.h.{i}.mlp.c_proj.{p:bias}", "layers.{i}.ffn.down_proj.{p}"),
    Rule("transformer.ln_f.{p}", "final_norm.{p}"),
    Rule("lm_head.weight", "lm_head.proj.weight"),
], drop=["transformer.h.{i}.attn.bias", "transformer.h.{i}.attn.masked_bias"])  # causal-mask buffers of old files

#: HF LlamaForCausalLM -> ArlmModel.
LLAMA_KEY_MAP = KeyMap([
    Rule("model.embed_tokens.weight", "embed_tokens.weight"),
    Rule("model.layers.{i}.input_layernorm.weight", "layers.{i}.attn_norm.weight"),
    Rule("model.layers.{i}.self_attn.{proj:[qkv]_proj}.{p}", "layers.{i}.attn.{proj}.{p}"),
    Rule("model.layers.{i}.self_attn.o_proj.{p}", "layers.{i}.attn.out_proj.{p}"),
    Rule("model.layers.{i}.post_attention_layernorm.weight", "layers.{i}.ffn_norm.weight"),
    Rule("model.layers.{i}.mlp.{proj:(gate|up|down)_proj}.{p}", "layers.{i}.ffn.{proj}.{p}"),
    Rule("model.norm.weight", "final_norm.weight"),
    Rule("lm_head.weight", "lm_head.proj.weight"),
], drop=["model.layers.{i}.self_attn.rotary_emb.inv_freq", "model.rotary_emb.inv_freq"])

#: xlm-core RotaryTransformerARLMModel -> ArlmModel (attn_bias=False: its attention has no biases).
XLM_CORE_KEY_MAP = KeyMap([
    Rule("embed_tokens.weight", "embed_tokens.weight"),
    *ENCODER_RULES,
    Rule("output_layer.norm_final.{p}", "final_norm.{p}"),
    Rule("output_layer.linear.weight", "lm_head.proj.weight"),
], drop=ENCODER_DROP)
_XLM_CORE_CLASSES = ("RotaryTransformerARLMModel",)


# -- configs ---------------------------------------------------------------------------------

_GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                     "gelu": "gelu"}


def _pad_id(c: Mapping[str, Any], vocab_size: int) -> int:
    """HF configs often leave pad unset; EOS (GPT-2's <|endoftext|>) stands in, else 0."""
    for name in ("pad_token_id", "eos_token_id"):
        value = c.get(name)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int) and 0 <= value < vocab_size:
            return value
    return 0


def arlm_config_from_hf_gpt2(hf_config: Any) -> ArlmConfig:
    """An ArlmConfig equal in function to a GPT2Config (a transformers config or its config.json dict)."""
    c = config_dict(hf_config)
    require(c, ["vocab_size", "n_embd", "n_layer", "n_head", "n_positions"], where="GPT-2 config.json")
    act = c.get("activation_function", "gelu_new")
    if act not in _GPT2_ACTIVATIONS:
        raise ConversionError(f"GPT-2 activation_function {act!r} has no xlm equivalent "
                              f"(supported: {sorted(_GPT2_ACTIVATIONS)})")
    unsupported = {"scale_attn_by_inverse_layer_idx": True, "add_cross_attention": True, "scale_attn_weights": False}
    for name, bad in unsupported.items():
        if c.get(name, not bad) == bad:
            raise ConversionError(f"GPT-2 config sets {name}={bad}, which ArlmModel does not implement")
    dim = c["n_embd"]
    return ArlmConfig(vocab_size=c["vocab_size"], model_dim=dim, num_layers=c["n_layer"], num_heads=c["n_head"],
                      ffn_dim=c.get("n_inner") or 4 * dim, max_seq_len=c["n_positions"], pos_encoding="learned",
                      norm="layernorm", norm_eps=c.get("layer_norm_epsilon", 1e-5),
                      activation=_GPT2_ACTIVATIONS[act], bias=True,
                      tie_embeddings=c.get("tie_word_embeddings", True), dropout=c.get("resid_pdrop", 0.1),
                      init_std=c.get("initializer_range", 0.02), pad_token_id=_pad_id(c, c["vocab_size"]))


def _rope_theta(c: Mapping[str, Any]) -> float:
    params = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type")
    if kind not in (None, "default"):
        raise ConversionError(f"Llama config uses rope scaling {kind!r}, which ArlmModel does not implement "
                              f"(only plain RoPE with a base, rope_theta)")
    theta = c.get("rope_theta", params.get("rope_theta"))
    return 10000.0 if theta is None else float(theta)


def arlm_config_from_hf_llama(hf_config: Any) -> ArlmConfig:
    """An ArlmConfig equal in function to a LlamaConfig: GQA, rope_theta, tied or untied head."""
    c = config_dict(hf_config)
    require(c, ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "max_position_embeddings"], where="Llama config.json")
    dim, heads = c["hidden_size"], c["num_attention_heads"]
    if c.get("head_dim") not in (None, dim // heads) or dim % heads:
        raise ConversionError(f"Llama config has head_dim={c.get('head_dim')} with hidden_size={dim} and "
                              f"num_attention_heads={heads}; ArlmModel needs head_dim = hidden_size / heads")
    if c.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"Llama hidden_act {c['hidden_act']!r}: ArlmModel's SwiGLU uses silu")
    attention_bias, mlp_bias = bool(c.get("attention_bias", False)), bool(c.get("mlp_bias", False))
    return ArlmConfig(vocab_size=c["vocab_size"], model_dim=dim, num_layers=c["num_hidden_layers"], num_heads=heads,
                      num_kv_heads=c.get("num_key_value_heads") or heads, ffn_dim=c["intermediate_size"],
                      max_seq_len=c["max_position_embeddings"], pos_encoding="rope", rope_base=_rope_theta(c),
                      norm="rmsnorm", norm_eps=c.get("rms_norm_eps", 1e-6), activation="swiglu",
                      bias=mlp_bias, attn_bias=None if attention_bias == mlp_bias else attention_bias,
                      tie_embeddings=c.get("tie_word_embeddings", False),
                      dropout=c.get("attention_dropout", 0.0), init_std=c.get("initializer_range", 0.02),
                      pad_token_id=_pad_id(c, c["vocab_size"]))


def gpt2_export_problems(config: ArlmConfig) -> list[str]:
    """Why the GPT-2 layout cannot hold this config ([] = it can)."""
    problems = []
    if config.pos_encoding != "learned":
        problems.append(f"pos_encoding={config.pos_encoding!r} (GPT-2 has learned positions)")
    if config.norm != "layernorm":
        problems.append(f"norm={config.norm!r} (GPT-2 uses layernorm)")
    if config.activation not in ("gelu_tanh", "gelu"):
        problems.append(f"activation={config.activation!r} (GPT-2 uses gelu_tanh or gelu)")
    if not config.bias:
        problems.append("bias=False (GPT-2 has biases)")
    if not attention_bias(config.bias, config.attn_bias):
        problems.append("attn_bias=False (GPT-2's attention has biases)")
    if config.kv_heads != config.num_heads:
        problems.append(f"num_kv_heads={config.num_kv_heads} (GPT-2 has no grouped-query attention)")
    return problems


def llama_export_problems(config: ArlmConfig) -> list[str]:
    """Why the Llama layout cannot hold this config ([] = it can)."""
    problems = []
    if config.pos_encoding != "rope":
        problems.append(f"pos_encoding={config.pos_encoding!r} (Llama uses rope)")
    elif config.rotary_dim not in (None, config.head_dim):
        problems.append(f"rotary_dim={config.rotary_dim} (Llama rotates the full head dim {config.head_dim})")
    if config.norm != "rmsnorm":
        problems.append(f"norm={config.norm!r} (Llama uses rmsnorm)")
    if config.activation != "swiglu":
        problems.append(f"activation={config.activation!r} (Llama uses swiglu)")
    return problems


def _check_exportable(config: ArlmConfig, problems: list[str], layout: str) -> None:
    if problems:
        raise ConversionError(f"this ARLM config has no {layout} equivalent: {'; '.join(problems)}")


def hf_gpt2_config(config: ArlmConfig) -> dict[str, Any]:
    """The config.json of the GPT2LMHeadModel equal in function to `config`."""
    _check_exportable(config, gpt2_export_problems(config), "GPT-2")
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": config.vocab_size,
            "n_positions": config.max_seq_len, "n_embd": config.model_dim, "n_layer": config.num_layers,
            "n_head": config.num_heads, "n_inner": config.hidden_ffn_dim,
            "activation_function": "gelu_new" if config.activation == "gelu_tanh" else "gelu",
            "layer_norm_epsilon": config.norm_eps, "resid_pdrop": config.dropout, "embd_pdrop": config.dropout,
            "attn_pdrop": config.dropout, "initializer_range": config.init_std,
            "tie_word_embeddings": config.tie_embeddings, "pad_token_id": config.pad_token_id}


def hf_llama_config(config: ArlmConfig) -> dict[str, Any]:
    """The config.json of the LlamaForCausalLM equal in function to `config`."""
    _check_exportable(config, llama_export_problems(config), "Llama")
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": config.vocab_size,
            "hidden_size": config.model_dim, "intermediate_size": config.hidden_ffn_dim,
            "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
            "num_key_value_heads": config.kv_heads, "head_dim": config.head_dim,
            "max_position_embeddings": config.max_seq_len, "hidden_act": "silu", "rms_norm_eps": config.norm_eps,
            "rope_theta": config.rope_base, "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
            "attention_bias": attention_bias(config.bias, config.attn_bias), "mlp_bias": config.bias,
            "attention_dropout": config.dropout,
            "initializer_range": config.init_std, "tie_word_embeddings": config.tie_embeddings,
            "pad_token_id": config.pad_token_id}


# -- state dicts -----------------------------------------------------------------------------

def _tie(state: dict[str, Tensor], config: ArlmConfig, source: str | None) -> None:
    """A tied checkpoint may omit the head (HF saves it once); if it has one, it must equal the table."""
    if not config.tie_embeddings or "embed_tokens.weight" not in state:
        return
    head = state.get("lm_head.proj.weight")
    table = state["embed_tokens.weight"]
    if head is not None and head is not table and not (head.shape == table.shape and head.equal(table)):
        raise ConversionError("the config ties the output head to the token embedding (tie_word_embeddings) but "
                              "the checkpoint's head differs from its embedding; set tie_word_embeddings to false "
                              "in config.json to keep a separate head", source=source)
    state["lm_head.proj.weight"] = table


def _to_xlm(key_map: KeyMap, state: Mapping[str, Tensor], config: ArlmConfig, *, source: str | None,
            notes: list[str]) -> Converted:
    result = key_map.apply(state, source=source)
    _tie(result.state, config, source)
    check_mapped(result, meta_model(create_arlm_model, config, tensors=len(state), where=source), source=source)
    return Converted(config, result.state, dropped=result.dropped, notes=notes, source=source)


def convert_hf_gpt2(state: Mapping[str, Tensor], hf_config: Any, *, source: str | None = None) -> Converted:
    """HF GPT-2 (GPT2LMHeadModel or a bare GPT2Model's keys) -> (ArlmConfig, ArlmModel state dict)."""
    config = arlm_config_from_hf_gpt2(hf_config)
    notes = []
    if not any(k.startswith("transformer.") for k in state):
        state = {f"transformer.{k}" if k != "lm_head.weight" else k: v for k, v in state.items()}
        notes.append("keys had no 'transformer.' prefix (a GPT2Model file); added it")
    return _to_xlm(GPT2_KEY_MAP, state, config, source=source, notes=notes)


def convert_hf_llama(state: Mapping[str, Tensor], hf_config: Any, *, source: str | None = None) -> Converted:
    """HF Llama (LlamaForCausalLM) -> (ArlmConfig, ArlmModel state dict)."""
    return _to_xlm(LLAMA_KEY_MAP, state, arlm_config_from_hf_llama(hf_config), source=source, notes=[])


def _from_xlm(key_map: KeyMap, state: Mapping[str, Tensor], config: ArlmConfig, hf_config: dict[str, Any]) -> Converted:
    state = dict(state)
    if config.tie_embeddings and "lm_head.proj.weight" not in state and "embed_tokens.weight" in state:
        state["lm_head.proj.weight"] = state["embed_tokens.weight"]
    check_state_dict(state, create_arlm_model(config, device="meta"), target="the ARLM config")
    result = key_map.inverse().apply(state)
    if result.unmatched or result.incomplete:
        raise ConversionError("keys with no place in the target layout",
                              unexpected=result.unmatched + result.incomplete)
    out = {k: v.contiguous() for k, v in result.state.items()}
    return Converted(hf_config, out)


def convert_to_hf_gpt2(state: Mapping[str, Tensor], config: ArlmConfig) -> Converted:
    """ArlmModel state dict -> (GPT-2 config.json dict, GPT2LMHeadModel state dict, `lm_head.weight` included)."""
    return _from_xlm(GPT2_KEY_MAP, state, config, hf_gpt2_config(config))


def convert_to_hf_llama(state: Mapping[str, Tensor], config: ArlmConfig) -> Converted:
    """ArlmModel state dict -> (Llama config.json dict, LlamaForCausalLM state dict)."""
    return _from_xlm(LLAMA_KEY_MAP, state, config, hf_llama_config(config))


def _reader(model_type: str) -> Callable[[Path], tuple[dict[str, Any], dict[str, Tensor]]]:
    return lambda path: read_hf_dir(path, model_type=model_type)


HF_GPT2 = Converter(name="hf_gpt2", description="HF transformers GPT-2 (GPT2LMHeadModel)",
                    to_xlm=convert_hf_gpt2, from_xlm=convert_to_hf_gpt2, export_problems=gpt2_export_problems,
                    read=_reader("gpt2"), hf=True, hf_model_types=("gpt2",), needs_config=True)
HF_LLAMA = Converter(name="hf_llama", description="HF transformers Llama (LlamaForCausalLM)",
                     to_xlm=convert_hf_llama, from_xlm=convert_to_hf_llama, export_problems=llama_export_problems,
                     read=_reader("llama"), hf=True, hf_model_types=("llama",), needs_config=True)


# -- xlm-core --------------------------------------------------------------------------------

def _arlm_from_xlm_core(xc: XlmCoreConfig, notes: list[str]) -> ArlmConfig:
    if not xc.final_layer_norm:
        raise ConversionError("the xlm-core model has no final LayerNorm (final_layer_without_normalization=True); "
                              "ArlmModel always normalises before its head, so it cannot compute this model")
    pad = pad_token_id(xc, notes)
    return ArlmConfig(vocab_size=xc.num_embeddings, model_dim=xc.d_model, num_layers=xc.num_layers,
                      num_heads=xc.nhead, ffn_dim=xc.dim_feedforward, max_seq_len=xc.max_length, pos_encoding="rope",
                      rope_base=ROPE_BASE, rotary_dim=None if xc.rotary_emb_dim == xc.head_dim else xc.rotary_emb_dim,
                      norm="layernorm", norm_eps=xc.layer_norm_eps, activation=xc.activation_ours, bias=True,
                      attn_bias=False, tie_embeddings=False, dropout=xc.dropout, pad_token_id=pad, padding_idx=pad)


def arlm_config_from_xlm_core(source_config: Any, state: Mapping[str, Tensor] | None = None) -> ArlmConfig:
    """The ArlmConfig of an xlm-core ARLM: its constructor arguments (config.json, or a Hydra config's `model`),
    with unresolved ones read off `state` (xlm-core keys) where the weights tell."""
    notes: list[str] = []
    xc = xlm_core_config(source_config, state or {}, where="xlm-core ARLM config", notes=notes,
                         classes=_XLM_CORE_CLASSES, final_layer_default=False)
    return _arlm_from_xlm_core(xc, notes)


def convert_arlm_xlm_core(state: Mapping[str, Tensor], source_config: Any, *,
                          source: str | None = None) -> Converted:
    """xlm-core RotaryTransformerARLMModel (its own keys, `model.` already stripped) -> (ArlmConfig, state)."""
    return convert_from_xlm_core(state, source_config, source=source, key_map=XLM_CORE_KEY_MAP,
                                 classes=_XLM_CORE_CLASSES, final_layer_default=False, build=_arlm_from_xlm_core,
                                 factory=create_arlm_model)


def xlm_core_export_problems(config: ArlmConfig) -> list[str]:
    """Why xlm-core's ARLM cannot hold this config ([] = it can). A tied head is written as its own copy."""
    problems = common_export_problems(config)
    if config.pos_encoding != "rope":
        problems.append(f"pos_encoding={config.pos_encoding!r} (xlm-core uses rope)")
    if config.kv_heads != config.num_heads:
        problems.append(f"num_kv_heads={config.num_kv_heads} (xlm-core has no grouped-query attention)")
    return problems


def xlm_core_arlm_config(config: ArlmConfig) -> dict[str, Any]:
    """The config.json (RotaryTransformerARLMModel's constructor arguments) equal in function to `config`."""
    _check_exportable(config, xlm_core_export_problems(config), "xlm-core")
    return constructor_args(config, rotary_dim=config.rotary_dim or config.head_dim,
                            final_layer_without_normalization=False)


def convert_to_arlm_xlm_core(state: Mapping[str, Tensor], config: ArlmConfig) -> Converted:
    """ArlmModel state dict -> (xlm-core config.json dict, RotaryTransformerARLMModel state dict as its hub export
    writes it)."""
    state = dict(state)
    if config.tie_embeddings and "lm_head.proj.weight" not in state and "embed_tokens.weight" in state:
        state["lm_head.proj.weight"] = state["embed_tokens.weight"]
    return convert_to_xlm_core(state, config, key_map=XLM_CORE_KEY_MAP, problems=xlm_core_export_problems(config),
                               export_config=lambda: xlm_core_arlm_config(config), factory=create_arlm_model,
                               rotary_dim=config.rotary_dim or config.head_dim, what="ARLM")


XLM_CORE = Converter(name="xlm_core",
                     description="xlm-core RotaryTransformerARLMModel (Lightning .ckpt, EMA when present; or its hub "
                                 "export: model.safetensors + config.json)",
                     to_xlm=convert_arlm_xlm_core, from_xlm=convert_to_arlm_xlm_core,
                     export_problems=xlm_core_export_problems, read=read_xlm_core,
                     recognises=recognises_xlm_core(_XLM_CORE_CLASSES), needs_config=True)
CONVERTERS = {"hf_gpt2": HF_GPT2, "hf_llama": HF_LLAMA, "xlm_core": XLM_CORE}
