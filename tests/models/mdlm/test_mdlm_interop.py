"""MDLM <-> the reference DiT of kuleshov-group/mdlm (`backbone.*` keys of kuleshov-group/mdlm-owt).

The reference code needs flash-attn, so these tests build a random state dict with the reference's
key names and shapes, and a short functional forward of the reference's math (written from its
`models/dit.py` layout: weight-only fp32 LayerNorm, adaLN shift/scale/gate, fused q|k|v with
half-split rotary on q and k, bidirectional attention, GELU-tanh MLP, modulated final layer)."""

import json
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from xlm.errors import ConversionError
from xlm.interop.export import ExportError, export
from xlm.models.mdlm import MdlmConfig, create_mdlm_model
from xlm.models.mdlm.interop import (MDLM_REFERENCE, convert_mdlm_reference, convert_to_mdlm_reference,
                                    mdlm_config_from_reference, read_mdlm_reference)
from xlm.registry import get_family

V, D, C, L, H, S = 40, 32, 24, 2, 4, 16  # cond_dim 24: not MdlmConfig's default (128), nor the repo class's (129)


def released_style_config(**overrides):
    """The fields of the HF repo's config.json, at test size."""
    return {"model_type": "mdlm", "architectures": ["MDLM"], "vocab_size": V, "model_length": S, "hidden_dim": D,
            "cond_dim": C, "n_blocks": L, "n_heads": H, "dropout": 0.1, "time_conditioning": False} | overrides


def reference_state(seed=0, freq=256, ratio=4):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    head = D // H
    s = OrderedDict()
    s["backbone.vocab_embed.embedding"] = r(V, D)
    s["backbone.sigma_map.mlp.0.weight"], s["backbone.sigma_map.mlp.0.bias"] = r(C, freq), r(C)
    s["backbone.sigma_map.mlp.2.weight"], s["backbone.sigma_map.mlp.2.bias"] = r(C, C), r(C)
    s["backbone.rotary_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, head, 2).float() / head))
    for i in range(L):
        b = f"backbone.blocks.{i}."
        s[b + "norm1.weight"] = 1 + r(D)
        s[b + "attn_qkv.weight"] = r(3 * D, D)
        s[b + "attn_out.weight"] = r(D, D)
        s[b + "norm2.weight"] = 1 + r(D)
        s[b + "mlp.0.weight"], s[b + "mlp.0.bias"] = r(ratio * D, D), r(ratio * D)
        s[b + "mlp.2.weight"], s[b + "mlp.2.bias"] = r(D, ratio * D), r(D)
        s[b + "adaLN_modulation.weight"], s[b + "adaLN_modulation.bias"] = r(6 * D, C), r(6 * D)
    o = "backbone.output_layer."
    s[o + "norm_final.weight"] = 1 + r(D)
    s[o + "linear.weight"], s[o + "linear.bias"] = r(V, D), r(V)
    s[o + "adaLN_modulation.weight"], s[o + "adaLN_modulation.bias"] = r(2 * D, C), r(2 * D)
    return s


def reference_forward(s, ids, sigma, *, time_conditioning):
    """The reference DiT's computation, written out on its own keys."""
    batch, seq = ids.shape
    head = D // H
    x = s["backbone.vocab_embed.embedding"][ids]
    if not time_conditioning:
        sigma = torch.zeros_like(sigma)
    freq = s["backbone.sigma_map.mlp.0.weight"].shape[1]
    half = freq // 2
    args = sigma[:, None].float() * torch.exp(-math.log(10000) * torch.arange(half).float() / half)[None]
    features = torch.cat([args.cos(), args.sin()], dim=-1)
    c = F.linear(features, s["backbone.sigma_map.mlp.0.weight"], s["backbone.sigma_map.mlp.0.bias"])
    c = F.linear(F.silu(c), s["backbone.sigma_map.mlp.2.weight"], s["backbone.sigma_map.mlp.2.bias"])
    c = F.silu(c)
    angles = torch.outer(torch.arange(seq).float(), s["backbone.rotary_emb.inv_freq"])
    cos, sin = torch.cat([angles, angles], -1).cos()[:, None], torch.cat([angles, angles], -1).sin()[:, None]

    def rotate(t):  # (batch, seq, heads, head_dim), halves (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)
        t1, t2 = t[..., : head // 2], t[..., head // 2:]
        return t * cos + torch.cat([-t2, t1], -1) * sin

    def norm(t, w):
        return F.layer_norm(t.float(), (D,)) * w

    for i in range(L):
        b = f"backbone.blocks.{i}."
        mod = F.linear(c, s[b + "adaLN_modulation.weight"], s[b + "adaLN_modulation.bias"])[:, None]
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mod.chunk(6, dim=-1)
        h = norm(x, s[b + "norm1.weight"]) * (1 + scale_a) + shift_a
        q, k, v = (h @ s[b + "attn_qkv.weight"].T).view(batch, seq, 3, H, head).unbind(2)
        q, k = rotate(q), rotate(k)
        probs = torch.einsum("bshd,bthd->bhst", q, k).div(math.sqrt(head)).softmax(-1)
        attended = torch.einsum("bhst,bthd->bshd", probs, v).reshape(batch, seq, D)
        x = x + gate_a * (attended @ s[b + "attn_out.weight"].T)
        h = norm(x, s[b + "norm2.weight"]) * (1 + scale_m) + shift_m
        h = F.gelu(F.linear(h, s[b + "mlp.0.weight"], s[b + "mlp.0.bias"]), approximate="tanh")
        x = x + gate_m * F.linear(h, s[b + "mlp.2.weight"], s[b + "mlp.2.bias"])
    o = "backbone.output_layer."
    shift, scale = F.linear(c, s[o + "adaLN_modulation.weight"], s[o + "adaLN_modulation.bias"])[:, None].chunk(2, -1)
    h = norm(x, s[o + "norm_final.weight"]) * (1 + scale) + shift
    return F.linear(h, s[o + "linear.weight"], s[o + "linear.bias"])


def load(converted):
    model = create_mdlm_model(converted.config).eval()
    model.load_state_dict(converted.state, strict=True)
    return model


@pytest.mark.parametrize("time_conditioning", [False, True])
def test_converted_model_computes_the_reference(time_conditioning):
    ref = reference_state()
    converted = convert_mdlm_reference(ref, released_style_config(time_conditioning=time_conditioning))
    assert converted.dropped == ["backbone.rotary_emb.inv_freq"]
    model = load(converted)
    ids = torch.randint(0, V, (3, S))
    sigma = torch.tensor([0.0, 0.7, 2.5])
    with torch.no_grad():
        ours = model(ids, sigma)
    assert torch.allclose(ours, reference_forward(ref, ids, sigma, time_conditioning=time_conditioning), atol=1e-5)


def test_config_comes_from_config_json():
    config = mdlm_config_from_reference(released_style_config(), reference_state())
    assert config == MdlmConfig(vocab_size=V, max_seq_len=S, model_dim=D, num_layers=L, num_heads=H, cond_dim=C,
                                mlp_ratio=4, sigma_embed_dim=256, rope_base=10000.0, norm_eps=1e-5, dropout=0.1,
                                time_conditioning=False)
    for field in ("cond_dim", "hidden_dim", "n_blocks", "time_conditioning"):
        incomplete = released_style_config()
        del incomplete[field]
        with pytest.raises(ConversionError, match=field):
            mdlm_config_from_reference(incomplete, reference_state())
    # the reference repo's Hydra names (a Lightning .ckpt's config) say the same
    hydra = {"model": {"hidden_size": D, "cond_dim": C, "n_heads": H, "n_blocks": L, "length": S, "dropout": 0.1},
             "time_conditioning": False}
    assert mdlm_config_from_reference(hydra, reference_state()) == config


def test_round_trips_are_identity():
    ref = reference_state()
    converted = convert_mdlm_reference(ref, released_style_config())
    back = convert_to_mdlm_reference(converted.state, converted.config)
    assert list(back.state) == list(ref)  # same keys, in the reference's order
    assert all(torch.equal(back.state[k], ref[k]) for k in ref)
    assert {k: back.config[k] for k in released_style_config()} == released_style_config()

    torch.manual_seed(0)
    model = create_mdlm_model(converted.config).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    ours = model.state_dict()
    again = convert_mdlm_reference(*reversed(tuple(convert_to_mdlm_reference(ours, model.config))))
    assert again.config == model.config
    assert set(again.state) == set(ours) and all(torch.equal(again.state[k], ours[k]) for k in ours)
    ids = torch.randint(0, V, (2, S))
    with torch.no_grad():
        assert torch.equal(load(again)(ids, 0.0), model(ids, 0.0))


def test_reference_dir_and_registered_converter(tmp_path):
    from safetensors.torch import save_file

    ref = reference_state()
    save_file(dict(ref), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(released_style_config()))
    config, state = get_family("mdlm").converters["mdlm_reference"](tmp_path)
    assert config.cond_dim == C
    ids = torch.randint(0, V, (2, S))
    with torch.no_grad():
        assert torch.allclose(load(MDLM_REFERENCE(tmp_path))(ids, 0.0), reference_forward(
            ref, ids, torch.zeros(2), time_conditioning=False), atol=1e-5)


class AttributeDictLike(dict):
    """Like Lightning's AttributeDict: a dict subclass the weights-only unpickler does not know."""


class CallbackState:
    def __init__(self):
        self.best_model_path = "last.ckpt"


def lightning_checkpoint(tmp_path, ref, shadow):
    omegaconf = pytest.importorskip("omegaconf")
    hydra = omegaconf.OmegaConf.create({
        "model": {"name": "small", "type": "ddit", "hidden_size": D, "cond_dim": C, "length": S, "n_blocks": L,
                  "n_heads": H, "scale_by_sigma": True, "dropout": 0.1},
        "time_conditioning": False, "training": {"ema": 0.9999}})
    ckpt = {"state_dict": ref, "hyper_parameters": AttributeDictLike(config=hydra),
            "ema": {"decay": 0.9999, "num_updates": 7, "shadow_params": shadow}, "epoch": 1, "global_step": 7,
            "callbacks": {"ModelCheckpoint": CallbackState()}}
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    return path


def test_lightning_checkpoint_with_ema(tmp_path):
    ref = reference_state()
    params = [k for k in ref if not k.endswith("inv_freq")]
    ema = reference_state(seed=1)
    path = lightning_checkpoint(tmp_path, ref, [ema[k] for k in params])

    converted = MDLM_REFERENCE(path)  # EMA by default
    assert converted.config.cond_dim == C and converted.config.vocab_size == V
    assert any("EMA" in note for note in converted.notes)
    ids = torch.randint(0, V, (2, S))
    zeros = torch.zeros(2)
    with torch.no_grad():
        assert torch.allclose(load(converted)(ids, 0.0), reference_forward(ema, ids, zeros, time_conditioning=False),
                              atol=1e-5)
        raw_config, raw_state = read_mdlm_reference(path, use_ema=False)
        raw = convert_mdlm_reference(raw_state, raw_config)
        assert torch.allclose(load(raw)(ids, 0.0), reference_forward(ref, ids, zeros, time_conditioning=False),
                              atol=1e-5)


def test_ema_out_of_order_is_an_error(tmp_path):
    ref = reference_state()
    params = [k for k in ref if not k.endswith("inv_freq")]
    path = lightning_checkpoint(tmp_path, ref, [ref[k] for k in reversed(params)])
    with pytest.raises(ConversionError, match="parameter order"):
        MDLM_REFERENCE(path)


def test_misfits_are_reported_together():
    ref = dict(reference_state())
    del ref["backbone.blocks.1.mlp.2.bias"]
    ref["backbone.blocks.0.attn_qkv.bias"] = torch.zeros(3 * D)
    ref["backbone.output_layer.linear.weight"] = torch.zeros(V + 1, D)
    with pytest.raises(ConversionError) as err:
        convert_mdlm_reference(ref, released_style_config(), source="mdlm-owt/model.safetensors")
    assert err.value.missing == ["blocks.1.mlp.down_proj.bias"]
    assert err.value.unexpected == ["backbone.blocks.0.attn_qkv.bias"]
    assert err.value.wrong_shapes == [("output_layer.linear.weight", (V + 1, D), (V, D))]


def test_rotary_buffer_must_agree_with_the_config():
    with pytest.raises(ConversionError, match="rotary_emb.inv_freq"):
        convert_mdlm_reference(reference_state(), released_style_config(n_heads=2))


def test_export_reference_layout_and_no_hf_layout(tmp_path):
    converted = convert_mdlm_reference(reference_state(), released_style_config())
    model = load(converted)
    out = export(model, tmp_path / "ref", format="mdlm_reference")
    assert json.loads((out / "config.json").read_text())["cond_dim"] == C
    ids = torch.randint(0, V, (2, S))
    with torch.no_grad():
        assert torch.equal(load(MDLM_REFERENCE(out))(ids, 0.0), model(ids, 0.0))
    with pytest.raises(ExportError, match="no HF transformers layout.*mdlm_reference"):
        export(model, tmp_path / "hf", format="hf")
    odd = create_mdlm_model(MdlmConfig(vocab_size=V, model_dim=D, num_heads=H, num_layers=1, sigma_embed_dim=32))
    with pytest.raises(ExportError, match="sigma_embed_dim=32"):
        export(odd, tmp_path / "odd", format="mdlm_reference")
