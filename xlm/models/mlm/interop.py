"""Checkpoint converters for MLM: HF transformers BERT (BertForMaskedLM) and xlm-core's MLM, both ways.

    config, state = HF_BERT("path/to/bert-base-uncased")
    converted = convert_hf_bert(hf_model.state_dict(), hf_model.config)
    print(converted.dropped)     # e.g. the pooler and next-sentence head of a BertForPreTraining file
    config, state = XLM_CORE("run/checkpoints/last.ckpt")   # xlm-core Lightning .ckpt (EMA when present)

MlmModel's BERT configuration (post-LN, learned positions, token types, the dense+GELU+LayerNorm
head transform, a tied decoder with its own bias) matches BERT key by key, so the map is a rename.
BERT's decoder bias appears twice in HF state dicts (`cls.predictions.bias` and the tied
`cls.predictions.decoder.bias`): both feed `head.proj.bias`, and must agree. Pre-training-only
weights (pooler, next-sentence head) are dropped and reported; old files' `LayerNorm.gamma/beta`
names are read as `weight/bias`.

xlm-core's `RotaryTransformerMLMModel` (`xlm-models/mlm/model_mlm.py`, layers from
`src/xlm/modules/rotary_transformer.py`) is a pre-LN bidirectional encoder: LayerNorm with bias, fused
bias-free q|k|v, bias-free `o_proj`, an MLP with biases (ReLU or GELU-tanh), NeoX half-split rotary (base
10000), a final LayerNorm unless `final_layer_without_normalization`, an untied bias-free output linear:

    embed_tokens.weight                      -> embed_tokens.weight
    encoder.{i}.norm1 / norm2                -> layers.{i}.attn_norm / ffn_norm
    encoder.{i}.attn_qkv.weight (3d, d)      -> layers.{i}.attn.{q,k,v}_proj.weight   (q|k|v, chunk(3, dim=0))
    encoder.{i}.o_proj.weight                -> layers.{i}.attn.out_proj.weight       (attn_bias=False)
    encoder.{i}.mlp.0 / mlp.2                -> layers.{i}.ffn.up_proj / down_proj
    encoder.{i}.rotary_emb.inv_freq          -> dropped (checked against rotary_emb_dim)
    output_layer.norm_final                  -> final_norm
    output_layer.linear.weight               -> head.proj.weight    (no head transform, no bias, untied)

Partial rotary (rotary_emb_dim < d_model / nhead) becomes `rotary_dim`. MlmModel always has a final norm: a
checkpoint without it (final_layer_without_normalization) is refused, saying so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from xlm.errors import ConversionError
from xlm.interop.converter import config_dict, Converted, Converter, require
from xlm.interop.keymap import check_mapped, check_state_dict, KeyMap, Rule
from xlm.interop.readers import read_hf_dir
from xlm.interop.xlm_core import (ENCODER_DROP, ENCODER_RULES, ROPE_BASE, XlmCoreConfig, common_export_problems,
                                      constructor_args, convert_from_xlm_core, convert_to_xlm_core, pad_token_id,
                                      read_xlm_core, recognises_xlm_core, xlm_core_config)
from xlm.nn import attention_bias
from xlm.model_bounds import meta_model

from .config import MlmConfig
from .factory import create_mlm_model

__all__ = ["BERT_KEY_MAP", "CONVERTERS", "HF_BERT", "XLM_CORE", "XLM_CORE_KEY_MAP", "bert_export_problems",
           "convert_hf_bert", "convert_mlm_xlm_core", "convert_to_hf_bert", "convert_to_mlm_xlm_core", "hf_bert_config",
           "mlm_config_from_hf_bert", "mlm_config_from_xlm_core", "xlm_core_export_problems", "xlm_core_mlm_config"]

_LAYER = "bert.encoder.layer.{i}."

#: HF BertForMaskedLM -> MlmModel (its inverse maps back).
BERT_KEY_MAP = KeyMap([
    Rule("bert.embeddings.word_embeddings.weight", "embed_tokens.weight"),
    Rule("bert.embeddings.position_embeddings.weight", "embed_positions.weight"),
    Rule("bert.embeddings.token_type_embeddings.weight", "embed_token_types.weight"),
    Rule("bert.embeddings.LayerNorm.{p}", "embed_norm.{p}"),
    Rule(_LAYER + "attention.self.query.{p}", "layers.{i}.attn.q_proj.{p}"),
    Rule(_LAYER + "attention.self.key.{p}", "layers.{i}.attn.k_proj.{p}"),
    Rule(_LAYER + "attention.self.value.{p}", "layers.{i}.attn.v_proj.{p}"),
    Rule(_LAYER + "attention.output.dense.{p}", "layers.{i}.attn.out_proj.{p}"),
    Rule(_LAYER + "attention.output.LayerNorm.{p}", "layers.{i}.attn_norm.{p}"),
    Rule(_LAYER + "intermediate.dense.{p}", "layers.{i}.ffn.up_proj.{p}"),
    Rule(_LAYER + "output.dense.{p}", "layers.{i}.ffn.down_proj.{p}"),
    Rule(_LAYER + "output.LayerNorm.{p}", "layers.{i}.ffn_norm.{p}"),
    Rule("cls.predictions.transform.dense.{p}", "head.dense.{p}"),
    Rule("cls.predictions.transform.LayerNorm.{p}", "head.norm.{p}"),
    Rule("cls.predictions.decoder.weight", "head.proj.weight"),
    Rule("cls.predictions.decoder.bias", "head.proj.bias"),
    Rule("cls.predictions.bias", "head.proj.bias"),  # the same bias, listed twice by HF
], drop=["bert.pooler.dense.{p}", "cls.seq_relationship.{p}", "bert.embeddings.position_ids",
         "bert.embeddings.token_type_ids"])

#: xlm-core RotaryTransformerMLMModel -> MlmModel (attn_bias=False: its attention has no biases).
XLM_CORE_KEY_MAP = KeyMap([
    Rule("embed_tokens.weight", "embed_tokens.weight"),
    *ENCODER_RULES,
    Rule("output_layer.norm_final.{p}", "final_norm.{p}"),
    Rule("output_layer.linear.weight", "head.proj.weight"),
], drop=ENCODER_DROP)
_XLM_CORE_CLASSES = ("RotaryTransformerMLMModel",)

_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def mlm_config_from_hf_bert(hf_config: Any) -> MlmConfig:
    """An MlmConfig equal in function to a BertConfig (a transformers config or its config.json dict)."""
    c = config_dict(hf_config)
    require(c, ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings"], where="BERT config.json")
    act = c.get("hidden_act", "gelu")
    if act not in _ACTIVATIONS:
        raise ConversionError(f"BERT hidden_act {act!r} has no xlm equivalent (supported: {sorted(_ACTIVATIONS)})")
    position = c.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise ConversionError(f"BERT position_embedding_type {position!r}: MlmModel has absolute positions only")
    if c.get("is_decoder") or c.get("add_cross_attention"):
        raise ConversionError("BERT config is a decoder / has cross-attention; MlmModel is an encoder only")
    pad = c.get("pad_token_id")
    return MlmConfig(vocab_size=c["vocab_size"], model_dim=c["hidden_size"], num_layers=c["num_hidden_layers"],
                     num_heads=c["num_attention_heads"], ffn_dim=c["intermediate_size"],
                     max_seq_len=c["max_position_embeddings"], norm_position="post", pos_encoding="learned",
                     type_vocab_size=c.get("type_vocab_size", 2), norm="layernorm",
                     norm_eps=c.get("layer_norm_eps", 1e-12), activation=_ACTIVATIONS[act], bias=True,
                     head_transform=True, head_bias=True, tie_embeddings=c.get("tie_word_embeddings", True),
                     dropout=c.get("hidden_dropout_prob", 0.1), init_std=c.get("initializer_range", 0.02),
                     pad_token_id=pad if isinstance(pad, int) and 0 <= pad < c["vocab_size"] else 0)


def bert_export_problems(config: MlmConfig) -> list[str]:
    """Why the BERT layout cannot hold this config ([] = it can)."""
    wanted = {"norm_position": "post", "pos_encoding": "learned", "norm": "layernorm", "bias": True,
              "head_transform": True, "head_bias": True}
    problems = [f"{name}={getattr(config, name)!r} (BERT: {value!r})" for name, value in wanted.items()
                if getattr(config, name) != value]
    if not attention_bias(config.bias, config.attn_bias):
        problems.append("attn_bias=False (BERT's attention has biases)")
    if config.activation not in ("gelu", "gelu_tanh"):
        problems.append(f"activation={config.activation!r} (BERT: gelu)")
    if config.type_vocab_size < 1:
        problems.append("type_vocab_size=0 (BERT has token-type embeddings)")
    return problems


def hf_bert_config(config: MlmConfig) -> dict[str, Any]:
    """The config.json of the BertForMaskedLM equal in function to `config`."""
    problems = bert_export_problems(config)
    if problems:
        raise ConversionError(f"this MLM config has no BERT equivalent: {'; '.join(problems)}")
    return {"model_type": "bert", "architectures": ["BertForMaskedLM"], "vocab_size": config.vocab_size,
            "hidden_size": config.model_dim, "num_hidden_layers": config.num_layers,
            "num_attention_heads": config.num_heads, "intermediate_size": config.hidden_ffn_dim,
            "hidden_act": "gelu" if config.activation == "gelu" else "gelu_new",
            "max_position_embeddings": config.max_seq_len, "type_vocab_size": config.type_vocab_size,
            "layer_norm_eps": config.norm_eps, "hidden_dropout_prob": config.dropout,
            "attention_probs_dropout_prob": config.dropout, "initializer_range": config.init_std,
            "position_embedding_type": "absolute", "tie_word_embeddings": config.tie_embeddings,
            "pad_token_id": config.pad_token_id}


_GAMMA_BETA = re.compile(r"(LayerNorm)\.(gamma|beta)$")


def convert_hf_bert(state: Mapping[str, Tensor], hf_config: Any, *, source: str | None = None) -> Converted:
    """HF BERT (BertForMaskedLM or BertForPreTraining) -> (MlmConfig, MlmModel state dict)."""
    config = mlm_config_from_hf_bert(hf_config)
    notes = []
    if any(_GAMMA_BETA.search(k) for k in state):
        state = {_GAMMA_BETA.sub(lambda m: f"{m.group(1)}.{'weight' if m.group(2) == 'gamma' else 'bias'}", k): v
                 for k, v in state.items()}
        notes.append("read LayerNorm.gamma/beta as weight/bias (an old BERT file)")
    dropped = []
    decoder_bias, bias = state.get("cls.predictions.decoder.bias"), state.get("cls.predictions.bias")
    if (not config.tie_embeddings and decoder_bias is not None and bias is not None
            and not (decoder_bias.shape == bias.shape and decoder_bias.equal(bias))):
        # transformers 5 ties the two biases only with tied embeddings; untied, forward uses the decoder's
        state = {k: v for k, v in state.items() if k != "cls.predictions.bias"}
        dropped.append("cls.predictions.bias")
        notes.append("cls.predictions.bias differs from cls.predictions.decoder.bias in an untied head, where "
                     "BertForMaskedLM's forward uses only the decoder's: kept that one")
    result = BERT_KEY_MAP.apply(state, source=source)
    mapped = result.state
    if config.tie_embeddings and "embed_tokens.weight" in mapped:
        head = mapped.get("head.proj.weight")
        table = mapped["embed_tokens.weight"]
        if head is not None and head is not table and not (head.shape == table.shape and head.equal(table)):
            raise ConversionError("the config ties the decoder to the word embeddings (tie_word_embeddings) but the "
                                  "checkpoint's decoder differs; set tie_word_embeddings to false in config.json",
                                  source=source)
        mapped["head.proj.weight"] = table
    check_mapped(result, meta_model(create_mlm_model, config, tensors=len(state), where=source), source=source)
    return Converted(config, mapped, dropped=dropped + result.dropped, notes=notes, source=source)


def convert_to_hf_bert(state: Mapping[str, Tensor], config: MlmConfig) -> Converted:
    """MlmModel state dict -> (BERT config.json dict, BertForMaskedLM state dict with both bias keys)."""
    hf_config = hf_bert_config(config)
    state = dict(state)
    if config.tie_embeddings and "head.proj.weight" not in state and "embed_tokens.weight" in state:
        state["head.proj.weight"] = state["embed_tokens.weight"]
    check_state_dict(state, create_mlm_model(config, device="meta"), target="the MLM config")
    result = BERT_KEY_MAP.inverse().apply(state)
    if result.unmatched or result.incomplete:
        raise ConversionError("keys with no place in the BERT layout", unexpected=result.unmatched + result.incomplete)
    return Converted(hf_config, {k: v.contiguous() for k, v in result.state.items()})


def _read_bert(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    return read_hf_dir(path, model_type="bert")


HF_BERT = Converter(name="hf_bert", description="HF transformers BERT (BertForMaskedLM / BertForPreTraining)",
                    to_xlm=convert_hf_bert, from_xlm=convert_to_hf_bert, export_problems=bert_export_problems,
                    read=_read_bert, hf=True, hf_model_types=("bert",), needs_config=True)


# -- xlm-core --------------------------------------------------------------------------------

def _mlm_from_xlm_core(xc: XlmCoreConfig, notes: list[str]) -> MlmConfig:
    if not xc.final_layer_norm:
        raise ConversionError("MlmModel cannot compute this xlm-core MLM: it has no final LayerNorm "
                              "(final_layer_without_normalization=True), and MlmModel's pre-LN encoder always "
                              "normalises before its head")
    pad = pad_token_id(xc, notes)
    return MlmConfig(vocab_size=xc.num_embeddings, model_dim=xc.d_model, num_layers=xc.num_layers, num_heads=xc.nhead,
                     ffn_dim=xc.dim_feedforward, max_seq_len=xc.max_length, norm_position="pre", pos_encoding="rope",
                     rope_base=ROPE_BASE, rotary_dim=xc.rotary_dim_ours, type_vocab_size=0, norm="layernorm",
                     norm_eps=xc.layer_norm_eps, activation=xc.activation_ours, bias=True, attn_bias=False,
                     head_transform=False, head_bias=False, tie_embeddings=False, dropout=xc.dropout,
                     pad_token_id=pad, padding_idx=pad)


def mlm_config_from_xlm_core(source_config: Any, state: Mapping[str, Tensor] | None = None) -> MlmConfig:
    """The MlmConfig of an xlm-core MLM: its constructor arguments (config.json, or a Hydra config's `model`),
    with unresolved ones read off `state` (xlm-core keys) where the weights tell."""
    notes: list[str] = []
    xc = xlm_core_config(source_config, state or {}, where="xlm-core MLM config", notes=notes,
                         classes=_XLM_CORE_CLASSES, final_layer_default=False)
    return _mlm_from_xlm_core(xc, notes)


def convert_mlm_xlm_core(state: Mapping[str, Tensor], source_config: Any, *, source: str | None = None) -> Converted:
    """xlm-core RotaryTransformerMLMModel (its own keys, `model.` already stripped) -> (MlmConfig, state)."""
    return convert_from_xlm_core(state, source_config, source=source, key_map=XLM_CORE_KEY_MAP,
                                 classes=_XLM_CORE_CLASSES, final_layer_default=False, build=_mlm_from_xlm_core,
                                 factory=create_mlm_model)


def xlm_core_export_problems(config: MlmConfig) -> list[str]:
    """Why xlm-core's MLM cannot hold this config ([] = it can). A tied head is written as its own copy."""
    problems = common_export_problems(config)
    if config.norm_position != "pre":
        problems.append(f"norm_position={config.norm_position!r} (xlm-core is pre-LN)")
    if config.pos_encoding != "rope":
        problems.append(f"pos_encoding={config.pos_encoding!r} (xlm-core uses rope)")
    if config.type_vocab_size:
        problems.append(f"type_vocab_size={config.type_vocab_size} (xlm-core has no token types)")
    if config.head_transform or config.head_bias:
        problems.append("a head transform or head bias (xlm-core's head is one bias-free linear)")
    return problems


def xlm_core_mlm_config(config: MlmConfig) -> dict[str, Any]:
    """The config.json (RotaryTransformerMLMModel's constructor arguments) equal in function to `config`.
    `mask_idx` is left out (the config does not know it; it does not change the network's function)."""
    problems = xlm_core_export_problems(config)
    if problems:
        raise ConversionError(f"this MLM config has no xlm-core equivalent: {'; '.join(problems)}")
    return constructor_args(config, rotary_dim=config.rotary_dim or config.head_dim, use_flex_attn=False,
                            final_layer_without_normalization=False)


def convert_to_mlm_xlm_core(state: Mapping[str, Tensor], config: MlmConfig) -> Converted:
    """MlmModel state dict -> (xlm-core config.json dict, RotaryTransformerMLMModel state dict as its hub export
    writes it)."""
    state = dict(state)
    if config.tie_embeddings and "head.proj.weight" not in state and "embed_tokens.weight" in state:
        state["head.proj.weight"] = state["embed_tokens.weight"]
    return convert_to_xlm_core(state, config, key_map=XLM_CORE_KEY_MAP, problems=xlm_core_export_problems(config),
                               export_config=lambda: xlm_core_mlm_config(config), factory=create_mlm_model,
                               rotary_dim=config.rotary_dim or config.head_dim, what="MLM")


XLM_CORE = Converter(name="xlm_core",
                     description="xlm-core RotaryTransformerMLMModel (Lightning .ckpt, EMA when present; or its hub "
                                 "export: model.safetensors + config.json)",
                     to_xlm=convert_mlm_xlm_core, from_xlm=convert_to_mlm_xlm_core,
                     export_problems=xlm_core_export_problems, read=read_xlm_core,
                     recognises=recognises_xlm_core(_XLM_CORE_CLASSES), needs_config=True)
CONVERTERS = {"hf_bert": HF_BERT, "xlm_core": XLM_CORE}
