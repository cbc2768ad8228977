import dataclasses

import pytest
import torch

from xlm.models.arlm.config import ArlmConfig, arlm_archs
from xlm.models.arlm.factory import create_arlm_model


def tiny_config(pos_encoding: str, **overrides) -> ArlmConfig:
    fields = dict(vocab_size=50, model_dim=32, num_layers=2, num_heads=4, ffn_dim=64, max_seq_len=32,
                  pos_encoding=pos_encoding)
    return ArlmConfig(**(fields | overrides))


def build(config: ArlmConfig):
    torch.manual_seed(0)
    return create_arlm_model(config).eval()


CONFIGS = {
    "rope": dict(pos_encoding="rope"),
    "learned": dict(pos_encoding="learned"),
    "llama_like": dict(pos_encoding="rope", num_kv_heads=2, norm="rmsnorm", activation="swiglu", bias=False,
                       tie_embeddings=False, rotary_dim=4),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_kv_cache_decoding_matches_full_forward(name):
    model = build(tiny_config(**CONFIGS[name]))
    ids = torch.randint(0, 50, (2, 9))
    full = model(ids)
    cache = model.new_kv_cache(2, max_len=9)
    steps = [model(ids[:, :5], kv_cache=cache)]
    steps.append(model(ids[:, 5:7], kv_cache=cache))
    steps += [model(ids[:, t:t + 1], kv_cache=cache) for t in (7, 8)]
    assert cache.length == 9
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


@pytest.mark.parametrize("name", CONFIGS)
def test_left_padded_batch_with_kv_cache(name):
    model = build(tiny_config(**CONFIGS[name]))
    prompts = [torch.randint(1, 50, (3,)), torch.randint(1, 50, (6,))]
    continuation = torch.randint(1, 50, (2, 3))
    width = 6
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = True

    cache = model.new_kv_cache(2)
    logits = [model(ids, attention_mask=mask, kv_cache=cache)]
    for t in range(continuation.size(1)):
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.bool)], dim=1)
        logits.append(model(continuation[:, t:t + 1], attention_mask=mask, kv_cache=cache))
    logits = torch.cat(logits, dim=1)
    assert not logits.isnan().any()

    for row, prompt in enumerate(prompts):
        alone = model(torch.cat([prompt, continuation[row]])[None])[0]
        real = logits[row, width - len(prompt):]
        assert torch.allclose(real, alone, atol=1e-5)
    # a full forward over the padded batch (no cache) agrees too
    padded_ids = torch.cat([ids, continuation], dim=1)
    assert torch.allclose(model(padded_ids, attention_mask=mask)[mask], logits[mask], atol=1e-5)


def test_learned_positions_beyond_max_seq_len():
    model = build(tiny_config("learned", max_seq_len=8))
    model(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="beyond max_seq_len=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_attention_mask_must_cover_cache():
    model = build(tiny_config("rope"))
    cache = model.new_kv_cache(1)
    model(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match=r"\(1, 4\)"):
        model(torch.zeros(1, 1, dtype=torch.long), attention_mask=torch.ones(1, 1, dtype=torch.bool), kv_cache=cache)


def test_tied_and_untied_embeddings(tmp_path):
    from safetensors.torch import load_model, save_model

    tied = build(tiny_config("rope"))
    assert tied.lm_head.proj.weight is tied.embed_tokens.weight
    state = tied.state_dict()
    assert state["lm_head.proj.weight"].data_ptr() == state["embed_tokens.weight"].data_ptr()
    with torch.no_grad():
        tied.embed_tokens.weight[0, 0] = 7.0
    assert tied.lm_head.proj.weight[0, 0] == 7.0

    save_model(tied, str(tmp_path / "model.safetensors"))
    restored = create_arlm_model(tiny_config("rope"))
    load_model(restored, str(tmp_path / "model.safetensors"))
    assert restored.lm_head.proj.weight is restored.embed_tokens.weight
    assert restored.lm_head.proj.weight[0, 0] == 7.0

    untied = build(tiny_config("rope", tie_embeddings=False))
    assert untied.lm_head.proj.weight.data_ptr() != untied.embed_tokens.weight.data_ptr()
    assert untied.num_parameters() - tied.num_parameters() == 50 * 32
    assert untied.num_parameters(non_embedding=True) == tied.num_parameters(non_embedding=True)


def test_init():
    model = build(tiny_config("learned", model_dim=256, ffn_dim=256, num_layers=2, num_heads=4))
    layer = model.layers[0]
    assert abs(layer.attn.q_proj.weight.std().item() - 0.02) < 0.001
    assert abs(layer.attn.out_proj.weight.std().item() - 0.01) < 0.0005  # 0.02 / sqrt(2 * 2)
    assert abs(layer.ffn.down_proj.weight.std().item() - 0.01) < 0.0005
    assert torch.equal(layer.attn.q_proj.bias, torch.zeros(256))
    assert torch.equal(layer.attn_norm.weight, torch.ones(256))
    padded = build(tiny_config("rope", padding_idx=2, attn_bias=False))
    assert not padded.embed_tokens.weight[2].any() and padded.embed_tokens.weight[3].any()
    assert padded.layers[0].attn.q_proj.bias is None and padded.layers[0].ffn.up_proj.bias is not None


@pytest.mark.parametrize("overrides, message", [
    (dict(model_dim=100), "num_heads=12 does not divide model_dim=100"),
    (dict(num_kv_heads=5), "num_kv_heads=5 does not divide num_heads=12"),
    (dict(pos_encoding="alibi"), "pos_encoding must be one of \\('rope', 'learned'\\), got 'alibi'"),
    (dict(norm="batchnorm"), "norm must be one of"),
    (dict(activation="tanh"), "activation must be one of"),
    (dict(rotary_dim=7), "rotary_dim must be even"),
    (dict(rotary_dim=8, pos_encoding="learned"), "rotary_dim only applies"),
    (dict(dropout=1.0), "dropout"),
    (dict(pad_token_id=10), "pad_token_id=10"),
    (dict(num_layers=0), "num_layers must be >= 1"),
])
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        ArlmConfig(vocab_size=10, **overrides)


def test_ffn_dim_defaults():
    assert ArlmConfig(vocab_size=10).hidden_ffn_dim == 3072
    assert ArlmConfig(vocab_size=10, model_dim=1024, num_heads=16, activation="swiglu").hidden_ffn_dim == 2752
    assert ArlmConfig(vocab_size=10, ffn_dim=100, activation="swiglu").hidden_ffn_dim == 100


@pytest.mark.parametrize("arch", arlm_archs.names())
def test_every_arch_builds_on_meta(arch):
    model = create_arlm_model(arlm_archs.get(arch), device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert len(model.layers) == model.config.num_layers
    assert model.lm_head.proj.weight.shape == (model.config.vocab_size, model.config.model_dim)


def test_archs_are_registered():
    assert {"arlm_tiny", "arlm_star", "arlm_small", "arlm_base"} <= set(arlm_archs.names())


def test_arlm_small_has_gpt2_small_parameter_count():
    config = arlm_archs.get("arlm_small")
    assert (config.vocab_size, config.max_seq_len) == (50257, 1024)
    assert create_arlm_model(config, device="meta").num_parameters() == 124_439_808


def test_tiny_arch_runs_and_casts():
    model = create_arlm_model(arlm_archs.get("arlm_tiny"), dtype=torch.bfloat16)
    assert model.embed_tokens.weight.dtype == torch.bfloat16
    cache = model.new_kv_cache(2, max_len=8)
    assert cache.keys[0].dtype == torch.bfloat16 and cache.keys[0].shape == (2, 2, 8, 16)
    assert model(torch.zeros(2, 5, dtype=torch.long), kv_cache=cache).shape == (2, 5, 128)


def randomize_(module: torch.nn.Module) -> None:
    """HF inits biases to zero and norms to one; random values make the key map actually tested."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.1)


def test_matches_hf_gpt2():
    """The knobs GPT-2 needs (learned positions, gelu_tanh, tied head) reproduce it; the key map itself
    is xlm.models.arlm.interop's (tests/models/arlm/test_arlm_interop.py covers it in depth)."""
    transformers = pytest.importorskip("transformers")
    from xlm.models.arlm.interop import convert_hf_gpt2

    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=64,
                                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    randomize_(hf)
    config, state = convert_hf_gpt2(hf.state_dict(), hf_config)
    assert (config.pos_encoding, config.activation, config.tie_embeddings) == ("learned", "gelu_tanh", True)
    model = create_arlm_model(config).eval()
    model.load_state_dict(state, strict=True)

    ids = torch.randint(0, 100, (2, 20))
    with torch.no_grad():
        expected = hf(ids).logits
        assert torch.allclose(model(ids), expected, atol=1e-5)
        mask = torch.ones(2, 20, dtype=torch.bool)
        mask[0, :4] = False
        expected = hf(ids, attention_mask=mask.long(), position_ids=(mask.long().cumsum(-1) - 1).clamp(min=0)).logits
        assert torch.allclose(model(ids, attention_mask=mask)[mask], expected[mask], atol=1e-5)


def test_matches_hf_llama():
    transformers = pytest.importorskip("transformers")
    from xlm.models.arlm.interop import convert_hf_llama

    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                         rms_norm_eps=1e-6, tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    randomize_(hf)
    config, state = convert_hf_llama(hf.state_dict(), hf_config)
    assert (config.norm, config.activation, config.kv_heads, config.bias) == ("rmsnorm", "swiglu", 2, False)
    model = create_arlm_model(config).eval()
    model.load_state_dict(state, strict=True)

    ids = torch.randint(0, 100, (2, 20))
    with torch.no_grad():
        assert torch.allclose(model(ids), hf(ids).logits, atol=1e-5)


def test_config_replace_keeps_derived_sizes_consistent():
    config = dataclasses.replace(arlm_archs.get("arlm_base"), model_dim=512, num_heads=8)
    assert config.hidden_ffn_dim == 1408 and config.head_dim == 64


def test_output_positions_give_the_selected_rows_of_the_full_logits():
    model = build(tiny_config("rope"))
    ids = torch.randint(0, 50, (3, 7))
    selected = torch.rand(3, 7) < 0.4
    selected[0, 0] = True
    full = model(ids)
    assert torch.allclose(model(ids, output_positions=selected), full[selected], atol=1e-6)
    with pytest.raises(ValueError, match=r"output_positions must have the shape of input_ids \(3, 7\)"):
        model(ids, output_positions=selected[:, :5])
