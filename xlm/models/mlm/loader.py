"""Checkpoint converters for MLM: HF transformers BERT (BertForMaskedLM), both ways.

    config, state = HF_BERT("path/to/bert-base-uncased")
    converted = convert_hf_bert(hf_model.state_dict(), hf_model.config)
    print(converted.dropped)     # e.g. the pooler and next-sentence head of a BertForPreTraining file

MlmModel's BERT configuration (post-LN, learned positions, token types, the dense+GELU+LayerNorm
head transform, a tied decoder with its own bias) matches BERT key by key, so the map is a rename.
BERT's decoder bias appears twice in HF state dicts (`cls.predictions.bias` and the tied
`cls.predictions.decoder.bias`): both feed `head.proj.bias`, and must agree. Pre-training-only
weights (pooler, next-sentence head) are dropped and reported; old files' `LayerNorm.gamma/beta`
names are read as `weight/bias`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor

from xlm.checkpoint_conversion import (ConversionError, Converted, Converter, KeyMap, Rule, check_mapped,
                                       check_state_dict, config_dict, read_hf_dir, require)

from .config import MlmConfig
from .factory import create_mlm_model

__all__ = ["BERT_KEY_MAP", "CONVERTERS", "HF_BERT", "bert_export_problems", "convert_hf_bert", "convert_to_hf_bert",
           "hf_bert_config", "mlm_config_from_hf_bert"]

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
    check_mapped(result, create_mlm_model(config, device="meta"), source=source)
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
                    read=_read_bert, hf=True)
CONVERTERS = {"hf_bert": HF_BERT}
