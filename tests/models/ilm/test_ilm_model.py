import pytest
import torch

from xlm.models.ilm.config import IlmConfig, ilm_archs
from xlm.models.ilm.factory import create_ilm_model
from xlm.models.ilm.model import IlmOutput
from xlm.nn import TransformerBlock


def tiny_config(**overrides) -> IlmConfig:
    fields = dict(vocab_size=50, model_dim=32, num_layers=2, num_heads=4, ffn_dim=64, max_seq_len=32)
    return IlmConfig(**(fields | overrides))


def build(config: IlmConfig):
    torch.manual_seed(0)
    return create_ilm_model(config).eval()


def test_outputs_token_logits_everywhere_and_stop_logits_per_row():
    model = build(tiny_config())
    out = model(torch.randint(0, 50, (3, 10)))
    assert isinstance(out, IlmOutput)
    assert out.token_logits.shape == (3, 10, 50) and out.stop_logits.shape == (3, 2)


def test_padding_inside_the_row_changes_nothing():
    """[CLS] [PAD] [PAD] prompt...: what the collators build for left-padded prompts."""
    model = build(tiny_config())
    row = torch.randint(1, 50, (7,))
    padded = torch.cat([row[:1], torch.zeros(3, dtype=torch.long), row[1:]])[None]
    mask = torch.tensor([[True, False, False, False] + [True] * 6])
    a, b = model(padded, attention_mask=mask), model(row[None])
    assert torch.allclose(a.token_logits[0, mask[0]], b.token_logits[0], atol=1e-5)
    assert torch.allclose(a.stop_logits, b.stop_logits, atol=1e-5)


def test_columns_may_come_in_any_order_given_positions():
    """The sampler appends inserted tokens as new columns and passes their positions."""
    model = build(tiny_config())
    ids = torch.randint(1, 50, (1, 8))
    order = torch.tensor([0, 3, 1, 7, 2, 5, 4, 6])  # column 0 ([CLS]) stays first
    shuffled = model(ids[:, order], positions=order[None])
    plain = model(ids)
    assert torch.allclose(shuffled.token_logits[0], plain.token_logits[0, order], atol=1e-5)
    assert torch.allclose(shuffled.stop_logits, plain.stop_logits, atol=1e-5)


def test_attention_is_bidirectional_and_the_stop_head_reads_column_0():
    model = build(tiny_config())
    ids = torch.randint(1, 50, (1, 8))
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 50
    assert not torch.allclose(model(ids).token_logits[0, 0], model(changed).token_logits[0, 0])
    assert not torch.allclose(model(ids).stop_logits, model(changed).stop_logits)
    assert all(isinstance(layer, TransformerBlock) and not layer.attn.causal for layer in model.layers)


def test_stop_head_skips_the_final_norm():
    model = build(tiny_config())
    ids = torch.randint(1, 50, (2, 6))
    hidden = model.hidden_states(ids)
    assert torch.allclose(model(ids).stop_logits, model.stop_head(hidden[:, 0]), atol=1e-6)
    assert torch.allclose(model(ids).token_logits, model.output_proj(model.final_norm(hidden)), atol=1e-6)
    bare = build(tiny_config(final_norm=False))
    assert bare.final_norm is None
    assert torch.allclose(bare(ids).token_logits, bare.output_proj(bare.hidden_states(ids)), atol=1e-6)


def test_state_dict_keys_are_the_ones_the_xlm_core_key_map_targets():
    """The layout the docstring's key map (from xlm-core's RotaryTransformerILMModelWithStoppingClassification)
    is written against: with attn_bias=False (as converted) xlm-core's keys exactly; by default attention biases
    too."""
    model = build(tiny_config(final_norm=True))
    per_layer = ["attn_norm.weight", "attn_norm.bias", "attn.q_proj.weight", "attn.k_proj.weight",
                 "attn.v_proj.weight", "attn.out_proj.weight", "ffn_norm.weight", "ffn_norm.bias",
                 "ffn.up_proj.weight", "ffn.up_proj.bias", "ffn.down_proj.weight", "ffn.down_proj.bias"]
    biases = ["attn.q_proj.bias", "attn.k_proj.bias", "attn.v_proj.bias", "attn.out_proj.bias"]
    expected = {"embed_tokens.weight", "final_norm.weight", "final_norm.bias", "output_proj.weight",
                "stop_head.norm.weight", "stop_head.norm.bias", "stop_head.up_proj.weight", "stop_head.up_proj.bias",
                "stop_head.down_proj.weight", "stop_head.down_proj.bias", "stop_head.proj.weight"}
    expected |= {f"layers.{i}.{k}" for i in range(2) for k in per_layer}
    assert set(build(tiny_config(final_norm=True, attn_bias=False)).state_dict()) == expected
    assert set(model.state_dict()) == expected | {f"layers.{i}.{k}" for i in range(2) for k in biases}
    assert model.stop_head.proj.weight.shape == (2, 32) and model.stop_head.up_proj.weight.shape == (64, 32)
    assert model.output_proj.bias is None and model.output_proj.weight is not model.embed_tokens.weight
    assert "final_norm.weight" not in build(tiny_config(final_norm=False)).state_dict()


def test_tied_embeddings_count_once():
    tied, untied = build(tiny_config(tie_embeddings=True)), build(tiny_config())
    assert tied.output_proj.weight is tied.embed_tokens.weight
    assert untied.num_parameters() - tied.num_parameters() == 50 * 32
    assert untied.num_parameters(non_embedding=True) == tied.num_parameters(non_embedding=True)


def test_partial_rotary():
    model = build(tiny_config(rotary_dim=4))
    assert model.layers[0].attn.rope.rotary_dim == 4
    assert model(torch.randint(0, 50, (1, 5))).token_logits.isfinite().all()


@pytest.mark.parametrize("overrides, message", [
    (dict(model_dim=30), "num_heads=4 does not divide model_dim=30"),
    (dict(model_dim=12, num_heads=4), "rotary_dim must be even"),
    (dict(rotary_dim=16), r"rotary_dim must be even and in \[2, head_dim=8\]"),
    (dict(activation="tanh"), "activation must be one of"),
    (dict(norm="batchnorm"), "norm must be one of"),
    (dict(dropout=1.0), "dropout"),
    (dict(pad_token_id=50), "pad_token_id=50"),
    (dict(num_layers=0), "num_layers must be >= 1"),
    (dict(ffn_dim=0), "ffn_dim must be >= 1"),
    (dict(stop_loss_weight=-1.0), "stop_loss_weight must be >= 0"),
])
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


@pytest.mark.parametrize("arch", ilm_archs.names())
def test_every_arch_builds_on_meta(arch):
    model = create_ilm_model(ilm_archs.get(arch), device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert len(model.layers) == model.config.num_layers


def test_archs():
    assert {"ilm_tiny", "ilm_star", "ilm_small"} <= set(ilm_archs.names())
    tiny, star, small = (ilm_archs.get(n) for n in ("ilm_tiny", "ilm_star", "ilm_small"))
    assert (tiny.model_dim, tiny.num_layers) == (32, 2)
    shape = (star.model_dim, star.num_layers, star.num_heads, star.hidden_ffn_dim, star.max_seq_len)
    assert shape == (128, 4, 4, 512, 256)
    assert (small.model_dim, small.num_layers, small.num_heads, small.hidden_ffn_dim, small.max_seq_len) == (
        768, 12, 12, 3072, 1024)
    # GPT-2 small's 85M non-embedding parameters (its blocks) plus the stop head (3 * 768^2 + ...)
    blocks = 12 * (4 * 768 * 768 + 4 * 768 + 2 * 768 * 3072 + 3072 + 768 + 4 * 768)
    stop_head = 2 * 768 + (768 * 1536 + 1536) + (1536 * 768 + 768) + 2 * 768
    assert create_ilm_model(small, device="meta").num_parameters(non_embedding=True) == blocks + stop_head


def test_padding_idx_row_starts_at_zero_and_gets_no_gradient():
    model = build(tiny_config(padding_idx=0)).train()
    assert not model.embed_tokens.weight[0].any() and model.embed_tokens.weight[1:].any()
    ids = torch.tensor([[1, 4, 0, 9, 0, 12]])  # [PAD]s attended: they would train their row without padding_idx
    model(ids).token_logits.sum().backward()
    assert not model.embed_tokens.weight.grad[0].any() and model.embed_tokens.weight.grad[9].any()
    with pytest.raises(ValueError, match="padding_idx=50 is outside the vocabulary"):
        tiny_config(padding_idx=50)
