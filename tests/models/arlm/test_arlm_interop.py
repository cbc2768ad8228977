"""ARLM <-> HF GPT-2 / Llama: same logits, bitwise round trips, one error for every misfit."""

import dataclasses
import json

import pytest
import torch

from xlm.errors import ConversionError
from xlm.models.arlm import create_arlm_model
from xlm.models.arlm.interop import (HF_GPT2, HF_LLAMA, arlm_config_from_hf_gpt2, arlm_config_from_hf_llama,
                                    convert_hf_gpt2, convert_hf_llama, convert_to_hf_gpt2, convert_to_hf_llama)
from xlm.registry import get_family

transformers = pytest.importorskip("transformers")


def randomize_(module: torch.nn.Module) -> None:
    """HF inits biases to zero and norms to one; random values make every key matter."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.1)


def gpt2(tie: bool = True):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=48, n_inner=80,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=tie,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    randomize_(model)
    return model


def llama(tie: bool, attention_bias: bool = False):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=56, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=48,
                                      rms_norm_eps=1e-6, rope_theta=5000.0, tie_word_embeddings=tie,
                                      attention_bias=attention_bias, bos_token_id=1, eos_token_id=2)
    model = transformers.LlamaForCausalLM(config).eval()
    randomize_(model)
    return model


MODELS = {"gpt2_tied": lambda: gpt2(True), "gpt2_untied": lambda: gpt2(False),
          "llama_tied": lambda: llama(True), "llama_untied": lambda: llama(False),
          "llama_attention_bias": lambda: llama(False, attention_bias=True)}  # and no MLP biases: attn_bias
TO_XLM = {"gpt2": convert_hf_gpt2, "llama": convert_hf_llama}
TO_HF = {"gpt2": convert_to_hf_gpt2, "llama": convert_to_hf_llama}


def ours_from(hf):
    converted = TO_XLM[hf.config.model_type](hf.state_dict(), hf.config)
    model = create_arlm_model(converted.config).eval()
    model.load_state_dict(converted.state, strict=True)
    return model


@pytest.mark.parametrize("name", MODELS)
def test_logits_match_hf(name):
    hf = MODELS[name]()
    model = ours_from(hf)
    assert model.config.tie_embeddings == hf.config.tie_word_embeddings
    assert model.lm_head.is_tied_to(model.embed_tokens) == hf.config.tie_word_embeddings
    ids = torch.randint(0, 64, (3, 17))
    with torch.no_grad():
        assert torch.allclose(model(ids), hf(ids).logits, atol=1e-5)


def test_llama_config_carries_gqa_rope_theta_and_sizes():
    config = arlm_config_from_hf_llama(llama(False).config)
    assert (config.num_heads, config.kv_heads, config.rope_base, config.ffn_dim) == (4, 2, 5000.0, 56)
    assert (config.max_seq_len, config.norm_eps, config.tie_embeddings, config.bias) == (48, 1e-6, False, False)
    # an older config.json spells the base as top-level rope_theta
    old = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
           "num_attention_heads": 2, "max_position_embeddings": 8, "rope_theta": 500000.0}
    assert arlm_config_from_hf_llama(old).rope_base == 500000.0
    assert arlm_config_from_hf_llama(old).kv_heads == 2  # absent num_key_value_heads = no GQA, as in HF


@pytest.mark.parametrize("name", MODELS)
def test_round_trip_hf_xlm_hf_is_bitwise(name):
    hf = MODELS[name]()
    original = hf.state_dict()
    converted = TO_XLM[hf.config.model_type](original, hf.config)
    back = TO_HF[hf.config.model_type](converted.state, converted.config)
    assert set(back.state) == set(original)
    for key, tensor in original.items():
        assert back.state[key].dtype == tensor.dtype and torch.equal(back.state[key], tensor), key


@pytest.mark.parametrize("name", MODELS)
def test_converter_reads_an_hf_model_dir(name, tmp_path):
    """save_pretrained drops the tied head; the converter re-ties it and the logits still match."""
    hf = MODELS[name]()
    hf.save_pretrained(tmp_path)
    converter = get_family("arlm").converters[f"hf_{hf.config.model_type}"]
    config, state = converter(tmp_path)
    model = create_arlm_model(config).eval()
    model.load_state_dict(state, strict=True)
    ids = torch.randint(0, 64, (2, 11))
    with torch.no_grad():
        assert torch.allclose(model(ids), hf(ids).logits, atol=1e-5)


def test_sizes_come_from_config_json_never_defaults(tmp_path):
    config = gpt2().config.to_dict()
    del config["n_embd"]
    with pytest.raises(ConversionError, match="'n_embd'"):
        arlm_config_from_hf_gpt2(config)
    hf = gpt2()
    hf.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert arlm_config_from_hf_gpt2(raw) == arlm_config_from_hf_gpt2(hf.config)
    assert arlm_config_from_hf_gpt2(raw).ffn_dim == 80


def test_gpt2_model_file_without_prefix_and_old_buffers():
    """A GPT2Model checkpoint (no 'transformer.' prefix) with the mask buffers old files carry."""
    hf = gpt2()
    state = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.ones(1, 1, 48, 48).tril()
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    converted = convert_hf_gpt2(state, hf.config)
    assert sorted(converted.dropped) == sorted(f"transformer.h.{i}.attn.{b}" for i in range(2)
                                               for b in ("bias", "masked_bias"))
    assert "transformer." in converted.summary()
    model = create_arlm_model(converted.config).eval()
    model.load_state_dict(converted.state, strict=True)
    ids = torch.randint(0, 64, (1, 9))
    with torch.no_grad():
        assert torch.allclose(model(ids), hf(ids).logits, atol=1e-5)


def test_misfits_are_reported_together():
    hf = llama(False)
    state = dict(hf.state_dict())
    del state["model.layers.1.mlp.up_proj.weight"]
    state["model.layers.0.self_attn.q_norm.weight"] = torch.ones(8)
    state["model.norm.weight"] = torch.ones(31)
    with pytest.raises(ConversionError) as err:
        convert_hf_llama(state, hf.config, source="ckpt/model.safetensors")
    message = str(err.value)
    assert message.startswith("ckpt/model.safetensors: ")
    assert "missing key(s): layers.1.ffn.up_proj.weight" in message
    assert "unexpected key(s): model.layers.0.self_attn.q_norm.weight" in message
    assert "final_norm.weight (checkpoint (31,), the model (32,))" in message
    assert err.value.missing == ["layers.1.ffn.up_proj.weight"]
    assert err.value.unexpected == ["model.layers.0.self_attn.q_norm.weight"]
    assert [k for k, _, _ in err.value.wrong_shapes] == ["final_norm.weight"]


def test_sizes_disagreeing_with_weights_are_an_error():
    hf = gpt2()
    config = hf.config.to_dict() | {"n_inner": 96}
    with pytest.raises(ConversionError, match=r"wrong shape\(s\).*ffn.up_proj.weight"):
        convert_hf_gpt2(hf.state_dict(), config)


def test_tied_config_with_a_different_head_is_an_error():
    hf = gpt2(tie=False)
    config = hf.config.to_dict() | {"tie_word_embeddings": True}
    with pytest.raises(ConversionError, match="tie_word_embeddings"):
        convert_hf_gpt2(hf.state_dict(), config)


@pytest.mark.parametrize("config, message", [
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope scaling 'llama3'"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"head_dim": 16}, "head_dim=16"),
])
def test_unsupported_llama_features_are_named(config, message):
    base = {"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 8}
    with pytest.raises(ConversionError, match=message):
        arlm_config_from_hf_llama(base | config)


def test_wrong_model_type_in_dir(tmp_path):
    gpt2().save_pretrained(tmp_path)
    with pytest.raises(ConversionError, match="model_type 'gpt2', not 'llama'"):
        HF_LLAMA(tmp_path)
    assert HF_GPT2(tmp_path).config.model_dim == 32


def test_to_hf_refuses_configs_without_a_layout():
    model = create_arlm_model(arlm_config_from_hf_gpt2(gpt2().config))
    with pytest.raises(ConversionError, match="no Llama equivalent: pos_encoding='learned'"):
        convert_to_hf_llama(model.state_dict(), model.config)
    config = dataclasses.replace(arlm_config_from_hf_gpt2(gpt2().config), attn_bias=False)
    model = create_arlm_model(config)
    with pytest.raises(ConversionError, match="no GPT-2 equivalent: attn_bias=False"):
        convert_to_hf_gpt2(model.state_dict(), model.config)
