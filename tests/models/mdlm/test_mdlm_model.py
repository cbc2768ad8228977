import math

import pytest
import torch
import torch.nn.functional as F

import xlm
from xlm.models.mdlm.config import MdlmConfig, mdlm_archs

V = 20


def _model(seed: int = 0, randomise: bool = True, **overrides):
    torch.manual_seed(seed)
    model = xlm.create_model("mdlm_tiny", vocab_size=V, **overrides).eval()
    if randomise:  # the zero-initialised modulation and output would hide most of the network
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.3)
    return model


def _reference_forward(model, ids, sigma):
    """The reference DiT's equations written out with plain tensor ops, from the state dict."""
    cfg, w = model.config, model.state_dict()
    heads, d = cfg.num_heads, cfg.head_dim
    batch, seq = ids.shape

    def linear(x, name, bias=True):
        return x @ w[f"{name}.weight"].T + (w[f"{name}.bias"] if bias else 0)

    def norm(x, name):
        return F.layer_norm(x, x.shape[-1:]) * w[f"{name}.weight"]

    half = cfg.sigma_embed_dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / half)
    features = torch.cat([torch.cos(sigma[:, None] * freqs), torch.sin(sigma[:, None] * freqs)], -1)
    c = F.silu(linear(F.silu(linear(features, "sigma_map.mlp.0")), "sigma_map.mlp.2"))
    inv_freq = 1.0 / cfg.rope_base ** (torch.arange(0, d, 2).float() / d)
    angles = torch.outer(torch.arange(seq).float(), inv_freq)
    cos, sin = angles.cos(), angles.sin()  # (seq, d/2): rotate the two halves of each head

    def rotary(t):
        t1, t2 = t[..., : d // 2], t[..., d // 2:]
        return torch.cat([t1 * cos - t2 * sin, t2 * cos + t1 * sin], -1)

    x = w["vocab_embed.weight"][ids]
    for i in range(cfg.num_layers):
        p = f"blocks.{i}"
        sh1, sc1, g1, sh2, sc2, g2 = linear(c, f"{p}.adaLN_modulation")[:, None].chunk(6, -1)
        h = norm(x, f"{p}.norm1") * (1 + sc1) + sh1
        qkv = linear(h, f"{p}.attn_qkv", bias=False).view(batch, seq, 3, heads, d)
        q, k, v = (qkv[:, :, j].transpose(1, 2) for j in range(3))
        q, k = rotary(q), rotary(k)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1) @ v
        x = x + g1 * linear(att.transpose(1, 2).reshape(batch, seq, -1), f"{p}.attn_out", bias=False)
        h = norm(x, f"{p}.norm2") * (1 + sc2) + sh2
        x = x + g2 * linear(F.gelu(linear(h, f"{p}.mlp.up_proj"), approximate="tanh"), f"{p}.mlp.down_proj")
    sh, sc = linear(c, "output_layer.adaLN_modulation")[:, None].chunk(2, -1)
    return linear(norm(x, "output_layer.norm_final") * (1 + sc) + sh, "output_layer.linear")


def test_matches_the_reference_dit_equations():
    model = _model(time_conditioning=True)
    ids = torch.randint(0, V, (2, 11))
    sigma = torch.tensor([0.3, 2.0])
    torch.testing.assert_close(model(ids, sigma), _reference_forward(model, ids, sigma), rtol=1e-4, atol=1e-4)


def test_module_tree_mirrors_the_reference():
    keys = set(_model(randomise=False).state_dict())
    expected = {"vocab_embed.weight", "sigma_map.mlp.0.weight", "sigma_map.mlp.0.bias", "sigma_map.mlp.2.weight",
                "output_layer.norm_final.weight", "output_layer.linear.weight", "output_layer.linear.bias",
                "output_layer.adaLN_modulation.weight", "output_layer.adaLN_modulation.bias"}
    for i in range(2):
        expected |= {f"blocks.{i}.{name}" for name in (
            "norm1.weight", "attn_qkv.weight", "attn_out.weight", "norm2.weight", "mlp.up_proj.weight",
            "mlp.up_proj.bias", "mlp.down_proj.weight", "mlp.down_proj.bias", "adaLN_modulation.weight",
            "adaLN_modulation.bias")}
    assert expected <= keys
    assert not any(k.endswith("norm1.bias") or k.endswith("attn_qkv.bias") for k in keys)  # as the reference


def test_fresh_model_is_uniform_because_modulation_and_output_start_at_zero():
    model = _model(randomise=False, time_conditioning=True)
    logits = model(torch.randint(0, V, (2, 7)), torch.tensor([0.1, 3.0]))
    assert torch.equal(logits, torch.zeros(2, 7, V))


def test_output_positions_project_only_the_selected_positions():
    model = _model()
    ids = torch.randint(0, V, (3, 9))
    select = torch.rand(3, 9) < 0.4
    full = model(ids, 0.0)
    torch.testing.assert_close(model(ids, 0.0, output_positions=select), full[select])


def test_time_independent_model_ignores_sigma():
    ids = torch.randint(0, V, (2, 6))
    flat = _model(time_conditioning=False)
    assert torch.equal(flat(ids, torch.tensor([0.1, 5.0])), flat(ids, torch.tensor([2.0, 0.0])))
    conditioned = _model(time_conditioning=True)
    assert not torch.allclose(conditioned(ids, torch.tensor([0.1, 5.0])), conditioned(ids, torch.tensor([2.0, 0.0])))


def test_left_padding_does_not_change_the_real_positions():
    model = _model()
    row = torch.randint(7, V, (1, 6))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), row], 1)
    mask = torch.tensor([[False] * 3 + [True] * 6])
    torch.testing.assert_close(model(padded, 0.0, attention_mask=mask)[:, 3:], model(row, 0.0), rtol=1e-5, atol=1e-5)


def test_bad_shapes_and_configs_say_what_is_wrong():
    model = _model(randomise=False)
    with pytest.raises(ValueError, match="sigma must be a scalar or have shape"):
        model(torch.zeros(2, 4, dtype=torch.long), torch.zeros(3))
    with pytest.raises(ValueError, match="output_positions must have the shape"):
        model(torch.zeros(2, 4, dtype=torch.long), 0.0, output_positions=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="noise_schedule must be one of"):
        MdlmConfig(vocab_size=10, noise_schedule="linear")
    with pytest.raises(ValueError, match="does not divide"):
        MdlmConfig(vocab_size=10, model_dim=30, num_heads=4)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"residual": "input"}, "residual must be one of"),
    ({"activation": "tanh"}, "activation must be one of"),
    ({"rotary_dim": 3}, r"rotary_dim must be even and in \[2, head_dim=16\]"),
    ({"rotary_dim": 18}, r"rotary_dim must be even and in \[2, head_dim=16\]"),
    ({"ffn_dim": 0}, "ffn_dim must be >= 1 or None"),
    ({"attention_dropout": 1.0}, "attention_dropout must be in"),
])
def test_the_xlm_core_options_are_checked(overrides, message):
    with pytest.raises(ValueError, match=message):
        xlm.create_model("mdlm_tiny", vocab_size=V, **overrides)


def test_ffn_width_activation_rotary_and_output_bias_shape_the_model():
    model = _model(ffn_dim=40, activation="relu", rotary_dim=8, output_bias=False)
    state = model.state_dict()
    assert state["blocks.0.mlp.up_proj.weight"].shape == (40, 32) and "output_layer.linear.bias" not in state
    assert (model.blocks[0].mlp.activation, model.rotary_emb.rotary_dim) == ("relu", 8)
    ids = torch.randint(0, V, (2, 7))
    assert model(ids, 0.0).isfinite().all()


def test_attention_dropout_acts_only_while_training():
    ids = torch.randint(0, V, (2, 9))
    dropping, plain = _model(attention_dropout=0.5), _model()  # the same weights
    assert torch.equal(dropping(ids, 0.0), plain(ids, 0.0))
    dropping.train()
    torch.manual_seed(1)
    first = dropping(ids, 0.0)
    torch.manual_seed(2)
    assert not torch.allclose(first, dropping(ids, 0.0))


def test_base_arch_is_the_papers_owt_model():
    cfg = mdlm_archs.get("mdlm_base")
    assert (cfg.num_layers, cfg.model_dim, cfg.num_heads, cfg.cond_dim, cfg.max_seq_len, cfg.vocab_size) == (
        12, 768, 12, 128, 1024, 50258)
    assert not cfg.time_conditioning
    model = xlm.create_model("mdlm_base", device="meta")
    # two untied 50258 x 768 tables around ~85M of blocks, the size of mdlm-owt
    assert 160e6 < sum(p.numel() for p in model.parameters()) < 175e6


def test_normal_init_starts_every_block_as_a_pre_ln_block_for_any_sigma():
    model = _model(randomise=False, time_conditioning=True, init="normal", init_std=0.05)
    dim = model.config.model_dim
    c = torch.randn(3, model.config.cond_dim)
    for block in model.blocks:
        shift, scale, gate = block.adaLN_modulation(c).view(3, 2, 3, dim).unbind(2)
        assert torch.equal(shift, torch.zeros_like(shift)) and torch.equal(scale, torch.zeros_like(scale))
        assert torch.equal(gate, torch.ones_like(gate))
        assert block.attn_qkv.weight.std().item() == pytest.approx(0.05, rel=0.15)
        assert block.attn_out.weight.std().item() == pytest.approx(0.05 / math.sqrt(4), rel=0.15)  # 2 blocks
    ids = torch.randint(0, V, (2, 7))
    logits = model(ids, torch.tensor([0.1, 3.0]))
    assert logits.abs().min() > 0  # not the reference init's uniform start
    torch.testing.assert_close(logits, model(ids, torch.tensor([2.5, 0.0])))  # the modulation ignores sigma
    torch.testing.assert_close(logits, _reference_forward(model, ids, torch.tensor([0.1, 3.0])), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("init", "attention_learns"), [("reference", False), ("normal", True)])
def test_only_the_normal_init_sends_the_first_step_a_gradient_into_attention(init, attention_learns):
    """Why the option exists: under adaLN-Zero a block's branches are gated by zero and the output projection is
    zero, so the first step moves the modulation and the output and nothing inside a block."""
    model = _model(randomise=False, init=init).train()
    ids = torch.randint(0, V, (4, 9))
    F.cross_entropy(model(ids, 0.0).flatten(0, 1), torch.randint(0, V, (36,))).backward()
    grad = model.blocks[0].attn_qkv.weight.grad
    assert bool(grad.abs().sum() > 0) is attention_learns
    assert model.output_layer.linear.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("overrides", "message"), [
    ({"init": "gpt2"}, r"init must be one of \('reference', 'normal'\), got 'gpt2'"),
    ({"init_std": 0.0}, "init_std must be > 0, got 0.0"),
])
def test_init_settings_are_checked(overrides, message):
    with pytest.raises(ValueError, match=message):
        xlm.create_model("mdlm_tiny", vocab_size=V, **overrides)
