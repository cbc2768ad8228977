import dataclasses

import pytest
import torch

from xlm.models.mlm.config import MlmConfig, mlm_archs
from xlm.models.mlm.factory import create_mlm_model
from xlm.models.mlm.model import PostNormBlock
from xlm.nn import TransformerBlock


def tiny_config(**overrides) -> MlmConfig:
    fields = dict(vocab_size=50, model_dim=32, num_layers=2, num_heads=4, ffn_dim=64, max_seq_len=32)
    return MlmConfig(**(fields | overrides))


def build(config: MlmConfig):
    torch.manual_seed(0)
    return create_mlm_model(config).eval()


BERT_LIKE = dict(norm_position="post", pos_encoding="learned", type_vocab_size=2, norm_eps=1e-12,
                 head_transform=True, head_bias=True)


@pytest.mark.parametrize("overrides", [{}, BERT_LIKE])
def test_output_positions_select_the_full_logits(overrides):
    model = build(tiny_config(**overrides))
    ids = torch.randint(0, 50, (3, 10))
    select = torch.rand(3, 10) < 0.4
    select[0, 0] = True
    full = model(ids)
    assert full.shape == (3, 10, 50)
    picked = model(ids, output_positions=select)
    assert picked.shape == (int(select.sum()), 50)
    assert torch.allclose(picked, full[select], atol=1e-6)


@pytest.mark.parametrize("overrides", [{}, BERT_LIKE])
def test_left_padding_does_not_change_real_positions(overrides):
    model = build(tiny_config(**overrides))
    row = torch.randint(1, 50, (6,))
    padded = torch.cat([torch.zeros(3, dtype=torch.long), row])[None]
    mask = torch.tensor([[False] * 3 + [True] * 6])
    assert torch.allclose(model(padded, attention_mask=mask)[0, 3:], model(row[None])[0], atol=1e-5)


def test_attention_is_bidirectional():
    model = build(tiny_config())
    ids = torch.randint(1, 50, (1, 8))
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 50
    # the first position sees the last one (a causal model would not)
    assert not torch.allclose(model(ids)[0, 0], model(changed)[0, 0])


def test_pre_and_post_norm_layouts():
    pre = build(tiny_config())
    assert all(isinstance(layer, TransformerBlock) for layer in pre.layers)
    assert not pre.layers[0].attn.causal
    assert pre.final_norm is not None and pre.embed_norm is None and pre.embed_positions is None
    assert pre.layers[0].attn.rope is not None
    post = build(tiny_config(**BERT_LIKE))
    assert all(isinstance(layer, PostNormBlock) for layer in post.layers)
    assert post.final_norm is None and post.embed_norm is not None
    assert post.embed_positions is not None and post.embed_token_types.weight.shape == (2, 32)
    assert post.layers[0].attn.rope is None
    assert post.head.dense is not None and post.head.proj.bias is not None
    assert post.head.proj.weight is post.embed_tokens.weight


def test_token_types_need_the_embedding():
    model = build(tiny_config())
    with pytest.raises(ValueError, match="type_vocab_size=0"):
        model(torch.zeros(1, 3, dtype=torch.long), token_type_ids=torch.zeros(1, 3, dtype=torch.long))


def test_learned_positions_beyond_max_seq_len():
    model = build(tiny_config(pos_encoding="learned", max_seq_len=8))
    model(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="beyond max_seq_len=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_untied_head_counts_its_own_weights():
    tied, untied = build(tiny_config()), build(tiny_config(tie_embeddings=False))
    assert untied.head.proj.weight is not untied.embed_tokens.weight
    assert untied.num_parameters() - tied.num_parameters() == 50 * 32
    assert untied.num_parameters(non_embedding=True) == tied.num_parameters(non_embedding=True)


@pytest.mark.parametrize("overrides, message", [
    (dict(model_dim=30), "num_heads=4 does not divide model_dim=30"),
    (dict(model_dim=12, num_heads=4), "rope needs an even head_dim"),
    (dict(rotary_dim=3), r"rotary_dim must be even and in \[2, head_dim=8\]"),
    (dict(rotary_dim=10), r"rotary_dim must be even and in \[2, head_dim=8\]"),
    (dict(rotary_dim=4, pos_encoding="learned"), "rotary_dim only applies to pos_encoding='rope'"),
    (dict(norm_position="sandwich"), "norm_position must be one of"),
    (dict(pos_encoding="alibi"), "pos_encoding must be one of"),
    (dict(activation="tanh"), "activation must be one of"),
    (dict(loss_weighting="1/t"), "loss_weighting must be one of"),
    (dict(type_vocab_size=-1), "type_vocab_size must be >= 0"),
    (dict(dropout=1.0), "dropout"),
    (dict(pad_token_id=50), "pad_token_id=50"),
    (dict(num_layers=0), "num_layers must be >= 1"),
])
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


@pytest.mark.parametrize("arch", mlm_archs.names())
def test_every_arch_builds_on_meta(arch):
    model = create_mlm_model(mlm_archs.get(arch), device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert len(model.layers) == model.config.num_layers


def test_archs_are_registered():
    assert {"mlm_tiny", "mlm_star", "mlm_base"} <= set(mlm_archs.names())


def test_mlm_base_is_bert_base():
    config = mlm_archs.get("mlm_base")
    assert (config.vocab_size, config.model_dim, config.num_layers, config.num_heads, config.hidden_ffn_dim,
            config.max_seq_len) == (30522, 768, 12, 12, 3072, 512)
    # bert-base-uncased's BertForMaskedLM: 109,514,298 parameters (tied decoder, no pooler)
    assert create_mlm_model(config, device="meta").num_parameters() == 109_514_298


def test_config_replace_keeps_derived_sizes_consistent():
    config = dataclasses.replace(mlm_archs.get("mlm_star"), model_dim=256, ffn_dim=None, num_heads=8)
    assert config.hidden_ffn_dim == 1024 and config.head_dim == 32


def randomize_(module: torch.nn.Module) -> None:
    """HF inits biases to zero and norms to one; random values make the key map actually tested."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.1)


def test_matches_hf_bert_masked_lm():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_config = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=128, max_position_embeddings=64, type_vocab_size=2,
                                        hidden_act="gelu", layer_norm_eps=1e-12, hidden_dropout_prob=0.0,
                                        attention_probs_dropout_prob=0.0)
    hf = transformers.BertForMaskedLM(hf_config).eval()
    randomize_(hf)
    from xlm.models.mlm.interop import convert_hf_bert

    config, state = convert_hf_bert(hf.state_dict(), hf_config)  # the key map lives in the loader
    assert config == MlmConfig(vocab_size=100, model_dim=64, num_layers=2, num_heads=4, ffn_dim=128, max_seq_len=64,
                               norm_position="post", pos_encoding="learned", type_vocab_size=2, norm="layernorm",
                               norm_eps=1e-12, activation="gelu", bias=True, head_transform=True, head_bias=True,
                               tie_embeddings=True, pad_token_id=0)
    model = create_mlm_model(config).eval()
    model.load_state_dict(state, strict=True)
    assert model.head.proj.weight is model.embed_tokens.weight

    ids = torch.randint(0, 100, (2, 20))
    types = torch.randint(0, 2, (2, 20))
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, 14:] = False  # right padding: HF's default positions (arange) agree with ours
    with torch.no_grad():
        expected = hf(input_ids=ids, token_type_ids=types).logits
        assert torch.allclose(model(ids, token_type_ids=types), expected, atol=1e-5)
        expected = hf(input_ids=ids, token_type_ids=types, attention_mask=mask.long()).logits
        ours = model(ids, attention_mask=mask, token_type_ids=types)
        assert torch.allclose(ours[mask], expected[mask], atol=1e-5)


@pytest.mark.parametrize("overrides", [{}, BERT_LIKE])
def test_attn_bias_and_padding_idx(overrides):
    model = build(tiny_config(attn_bias=False, padding_idx=0, tie_embeddings=False, **overrides)).train()
    names = [name for name, _ in model.named_parameters()]
    assert not any(".attn." in n and n.endswith(".bias") for n in names) and any(".ffn." in n for n in names)
    assert not model.embed_tokens.weight[0].any()
    ids = torch.tensor([[5, 6, 0, 0, 7]])  # a block's [PAD]s after [EOS] are attended content
    model(ids).sum().backward()
    assert not model.embed_tokens.weight.grad[0].any() and model.embed_tokens.weight.grad[5].any()
