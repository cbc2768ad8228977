"""Checkpoint converter for ILM: xlm-core's insertion model with its stopping classifier, both ways.

    config, state = XLM_CORE("ilm-owt/")                    # hub export: model.safetensors + config.json
    config, state = XLM_CORE("run/checkpoints/last.ckpt")   # Lightning .ckpt (EMA weights when present)
    raw = convert_ilm_xlm_core(*reversed(read_xlm_core("last.ckpt", use_ema=False)))   # its raw weights
    back = convert_to_ilm_xlm_core(model.state_dict(), model.config)      # (config.json dict, state)

xlm-core's `RotaryTransformerILMModelWithStoppingClassification` (`xlm-models/ilm/model_ilm.py`, layers from
`src/xlm/modules/rotary_transformer.py`; the model of dhruveshpatel/ilm-owt) is a pre-LN bidirectional
encoder: LayerNorm with bias, fused bias-free q|k|v (`attn_qkv`, chunked along its output), bias-free `o_proj`,
an MLP with biases (ReLU by default, or GELU-tanh), NeoX half-split rotary with base 10000 over the first
`rotary_emb_dim` dims of each head; token logits through `output_layer` (a LayerNorm only when
`final_layer_without_normalization` is False, its default being True) and a 2-class [stop, continue] head
(`length_output_layer`: x + dropout(mlp(norm(x))), d -> 2d -> d with tanh, then a bias-free linear) read at the
[CLS] column of the last block's output:

    embed_tokens.weight                          -> embed_tokens.weight
    encoder.{i}.norm1 / norm2                    -> layers.{i}.attn_norm / ffn_norm
    encoder.{i}.attn_qkv.weight (3d, d)          -> layers.{i}.attn.{q,k,v}_proj.weight   (q|k|v, chunk(3, dim=0))
    encoder.{i}.o_proj.weight                    -> layers.{i}.attn.out_proj.weight       (attn_bias=False)
    encoder.{i}.mlp.0 / mlp.2                    -> layers.{i}.ffn.up_proj / down_proj
    encoder.{i}.rotary_emb.inv_freq (sin, cos)   -> dropped (inv_freq checked against rotary_emb_dim)
    output_layer.norm_final                      -> final_norm        (only with a final norm; else final_norm=False)
    output_layer.linear.weight                   -> output_proj.weight
    length_output_layer.norm_final               -> stop_head.norm
    length_output_layer.mlp.0 / mlp.2            -> stop_head.up_proj / down_proj
    length_output_layer.linear.weight (2, d)     -> stop_head.proj.weight

Sizes come from the checkpoint's config (a hub config.json, or a .ckpt's hyper_parameters `model`), with
values the config left as unresolved interpolations read off the weights; xlm-core's other ILM classes (no
stopping head, or a length classifier over max_length classes) are refused with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from xlm.errors import ConversionError
from xlm.interop.converter import Converted, Converter
from xlm.interop.keymap import KeyMap, Rule
from xlm.interop.xlm_core import (ENCODER_DROP, ENCODER_RULES, ROPE_BASE, XlmCoreConfig, common_export_problems,
                                      constructor_args, convert_from_xlm_core, convert_to_xlm_core, pad_token_id,
                                      read_xlm_core, recognises_xlm_core, xlm_core_config)

from .config import IlmConfig
from .factory import create_ilm_model

__all__ = ["CONVERTERS", "XLM_CORE", "XLM_CORE_KEY_MAP", "convert_ilm_xlm_core", "convert_to_ilm_xlm_core",
           "ilm_config_from_xlm_core", "xlm_core_export_problems", "xlm_core_ilm_config"]

_STOP = "length_output_layer."

#: xlm-core RotaryTransformerILMModelWithStoppingClassification -> IlmModel (attn_bias=False).
XLM_CORE_KEY_MAP = KeyMap([
    Rule("embed_tokens.weight", "embed_tokens.weight"),
    *ENCODER_RULES,
    Rule("output_layer.norm_final.{p}", "final_norm.{p}"),
    Rule("output_layer.linear.weight", "output_proj.weight"),
    Rule(_STOP + "norm_final.{p}", "stop_head.norm.{p}"),
    Rule(_STOP + "mlp.0.{p}", "stop_head.up_proj.{p}"),
    Rule(_STOP + "mlp.2.{p}", "stop_head.down_proj.{p}"),
    Rule(_STOP + "linear.weight", "stop_head.proj.weight"),
], drop=ENCODER_DROP)
_XLM_CORE_CLASSES = ("RotaryTransformerILMModelWithStoppingClassification",)
_FINAL_LAYER_DEFAULT = True  # the ILM classes' final_layer_without_normalization default


def _check_stop_head(state: Mapping[str, Tensor], source: str | None) -> None:
    if not state:
        return
    head = state.get(_STOP + "linear.weight")
    if head is None:
        if not any(k.startswith(_STOP) for k in state):
            raise ConversionError("the checkpoint has no length_output_layer.* keys, the stopping classifier IlmModel "
                                  "needs (xlm-core's RotaryTransformerILMModelWithStoppingClassification has it; its "
                                  "RotaryTransformerILMModel does not)", source=source)
        return  # a missing key among the head's others: reported with every other misfit
    if head.ndim == 2 and head.shape[0] != 2:
        raise ConversionError(f"length_output_layer.linear has {head.shape[0]} classes: it is xlm-core's "
                              f"RotaryTransformerILMModelWithLengthClassification (a length classifier), not the "
                              f"2-class stopping head IlmModel has", source=source)


def _ilm_from_xlm_core(xc: XlmCoreConfig, notes: list[str]) -> IlmConfig:
    pad = pad_token_id(xc, notes)
    return IlmConfig(vocab_size=xc.num_embeddings, model_dim=xc.d_model, num_layers=xc.num_layers, num_heads=xc.nhead,
                     ffn_dim=xc.dim_feedforward, max_seq_len=xc.max_length, rope_base=ROPE_BASE,
                     rotary_dim=None if xc.rotary_emb_dim == xc.head_dim else xc.rotary_emb_dim, norm="layernorm",
                     norm_eps=xc.layer_norm_eps, activation=xc.activation_ours, bias=True, attn_bias=False,
                     final_norm=xc.final_layer_norm, tie_embeddings=False, dropout=xc.dropout,
                     pad_token_id=pad, padding_idx=pad)


def ilm_config_from_xlm_core(source_config: Any, state: Mapping[str, Tensor] | None = None) -> IlmConfig:
    """The IlmConfig of an xlm-core stopping ILM: its constructor arguments (config.json, or a Hydra config's
    `model`), with unresolved ones read off `state` (xlm-core keys) where the weights tell."""
    notes: list[str] = []
    xc = xlm_core_config(source_config, state or {}, where="xlm-core ILM config", notes=notes,
                         classes=_XLM_CORE_CLASSES, final_layer_default=_FINAL_LAYER_DEFAULT)
    return _ilm_from_xlm_core(xc, notes)


def convert_ilm_xlm_core(state: Mapping[str, Tensor], source_config: Any, *, source: str | None = None) -> Converted:
    """xlm-core RotaryTransformerILMModelWithStoppingClassification (its own keys, `model.` already stripped)
    -> (IlmConfig, IlmModel state dict)."""
    _check_stop_head(state, source)
    return convert_from_xlm_core(state, source_config, source=source, key_map=XLM_CORE_KEY_MAP,
                                 classes=_XLM_CORE_CLASSES, final_layer_default=_FINAL_LAYER_DEFAULT,
                                 build=_ilm_from_xlm_core, factory=create_ilm_model)


def xlm_core_export_problems(config: IlmConfig) -> list[str]:
    """Why xlm-core's stopping ILM cannot hold this config ([] = it can). A tied output projection is
    written as its own copy."""
    return common_export_problems(config)


def xlm_core_ilm_config(config: IlmConfig) -> dict[str, Any]:
    """The config.json (the constructor arguments of RotaryTransformerILMModelWithStoppingClassification) equal
    in function to `config`. `mask_idx` is left out (the config does not know it; the network does not use it)."""
    problems = xlm_core_export_problems(config)
    if problems:
        raise ConversionError(f"this ILM config has no xlm-core equivalent: {'; '.join(problems)}")
    return constructor_args(config, rotary_dim=config.rotary_dim or config.head_dim,
                            final_layer_without_normalization=not config.final_norm)


def convert_to_ilm_xlm_core(state: Mapping[str, Tensor], config: IlmConfig) -> Converted:
    """IlmModel state dict -> (xlm-core config.json dict, its state dict as xlm-core's hub export writes it)."""
    state = dict(state)
    if config.tie_embeddings and "output_proj.weight" not in state and "embed_tokens.weight" in state:
        state["output_proj.weight"] = state["embed_tokens.weight"]
    return convert_to_xlm_core(state, config, key_map=XLM_CORE_KEY_MAP, problems=xlm_core_export_problems(config),
                               export_config=lambda: xlm_core_ilm_config(config), factory=create_ilm_model,
                               rotary_dim=config.rotary_dim or config.head_dim, what="ILM")


XLM_CORE = Converter(name="xlm_core",
                     description="xlm-core RotaryTransformerILMModelWithStoppingClassification (hub export such as "
                                 "dhruveshpatel/ilm-owt: model.safetensors + config.json; or a Lightning .ckpt, EMA "
                                 "when present)",
                     to_xlm=convert_ilm_xlm_core, from_xlm=convert_to_ilm_xlm_core,
                     export_problems=xlm_core_export_problems, read=read_xlm_core,
                     recognises=recognises_xlm_core(_XLM_CORE_CLASSES), needs_config=True)
CONVERTERS = {"xlm_core": XLM_CORE}
