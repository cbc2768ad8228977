"""MLM <-> xlm-core's RotaryTransformerMLMModel (the "xlm_core" legacy layout): Lightning .ckpt and hub export.

The state dicts have xlm-core's exact key names, shapes and order (`xlm-models/mlm/model_mlm.py`,
`src/xlm/modules/rotary_transformer.py`); its forward is written out here: pre-LN with LayerNorm biases, fused
bias-free q|k|v chunked along the output, NeoX half-split rotary (base 10000) at the given positions,
bidirectional attention under a key-padding mask, MLP with biases, final LayerNorm, untied bias-free linear."""

import json
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

import xlm
from xlm.errors import ConversionError
from xlm.interop.export import ExportError, export
from xlm.models.mlm import MlmConfig, create_mlm_model
from xlm.models.mlm.interop import convert_mlm_xlm_core, convert_to_mlm_xlm_core, mlm_config_from_xlm_core
from xlm.registry import get_family
from xlm.interop.xlm_core import read_xlm_core

V, D, L, H, FF, S = 41, 32, 2, 4, 64, 12  # head dim 8


def inv_freq(rotary):
    return 1.0 / (10000 ** (torch.arange(0, rotary, 2).float() / rotary))


def hub_config(**overrides):
    return {"num_embeddings": V, "d_model": D, "num_layers": L, "nhead": H, "padding_idx": 0, "mask_idx": 1,
            "dim_feedforward": FF, "dropout": 0.1, "activation": "relu", "layer_norm_eps": 1e-5, "rotary_emb_dim": 8,
            "max_length": S, "force_flash_attn": False, "use_flex_attn": False,
            "final_layer_without_normalization": False} | overrides


def xlm_core_state(seed=0, rotary=8):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    s = OrderedDict()
    s["embed_tokens.weight"] = r(V, D)
    for i in range(L):
        p = f"encoder.{i}."
        s[p + "norm1.weight"], s[p + "norm1.bias"] = 1 + r(D), r(D)
        s[p + "attn_qkv.weight"] = r(3 * D, D)
        s[p + "o_proj.weight"] = r(D, D)
        s[p + "norm2.weight"], s[p + "norm2.bias"] = 1 + r(D), r(D)
        s[p + "mlp.0.weight"], s[p + "mlp.0.bias"] = r(FF, D), r(FF)
        s[p + "mlp.2.weight"], s[p + "mlp.2.bias"] = r(D, FF), r(D)
        s[p + "rotary_emb.inv_freq"] = inv_freq(rotary)
    s["output_layer.norm_final.weight"], s["output_layer.norm_final.bias"] = 1 + r(D), r(D)
    s["output_layer.linear.weight"] = r(V, D)
    return s


def xlm_core_forward(s, ids, attention_mask, positions, *, activation="relu", eps=1e-5):
    batch, seq = ids.shape
    head = D // H
    angles = positions[..., None].float() * inv_freq(head)
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]

    def rope(t):
        t1, t2 = t.chunk(2, dim=-1)
        return torch.cat([t1 * cos - t2 * sin, t2 * cos + t1 * sin], dim=-1)

    x = s["embed_tokens.weight"][ids]
    for i in range(L):
        p = f"encoder.{i}."
        h = F.layer_norm(x, (D,), s[p + "norm1.weight"], s[p + "norm1.bias"], eps)
        q, k, v = (t.view(batch, seq, H, head).transpose(1, 2) for t in (h @ s[p + "attn_qkv.weight"].T).chunk(3, -1))
        scores = rope(q) @ rope(k).transpose(-1, -2) / math.sqrt(head)
        attended = scores.masked_fill(~attention_mask[:, None, None, :], float("-inf")).softmax(-1) @ v
        x = x + attended.transpose(1, 2).reshape(batch, seq, D) @ s[p + "o_proj.weight"].T
        h = F.layer_norm(x, (D,), s[p + "norm2.weight"], s[p + "norm2.bias"], eps)
        h = F.linear(h, s[p + "mlp.0.weight"], s[p + "mlp.0.bias"])
        h = F.relu(h) if activation == "relu" else F.gelu(h, approximate="tanh")
        x = x + F.linear(h, s[p + "mlp.2.weight"], s[p + "mlp.2.bias"])
    x = F.layer_norm(x, (D,), s["output_layer.norm_final.weight"], s["output_layer.norm_final.bias"], eps)
    return x @ s["output_layer.linear.weight"].T


def batch():
    ids = torch.randint(0, V, (3, S))
    mask = torch.ones(3, S, dtype=torch.bool)
    mask[1, :4] = False  # a left-padded row
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def load(converted):
    model = create_mlm_model(converted.config).eval()
    model.load_state_dict(converted.state, strict=True)
    return model


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_converted_model_computes_xlm_core(activation):
    ref = xlm_core_state()
    converted = convert_mlm_xlm_core(ref, hub_config(activation=activation, layer_norm_eps=1e-6))
    model = load(converted)
    ids, mask, positions = batch()
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, positions=positions)
        theirs = xlm_core_forward(ref, ids, mask, positions, activation=activation, eps=1e-6)
        assert torch.allclose(ours[mask], theirs[mask], atol=1e-5)
        full = torch.ones_like(mask)
        plain = torch.arange(S).expand(3, S)
        assert torch.allclose(model(ids), xlm_core_forward(ref, ids, full, plain, activation=activation, eps=1e-6),
                              atol=1e-5)


def test_config_comes_from_the_checkpoint():
    config = mlm_config_from_xlm_core(hub_config(), xlm_core_state())
    assert config == MlmConfig(vocab_size=V, model_dim=D, num_layers=L, num_heads=H, ffn_dim=FF, max_seq_len=S,
                               norm_position="pre", pos_encoding="rope", rope_base=10000.0, type_vocab_size=0,
                               norm="layernorm", norm_eps=1e-5, activation="relu", bias=True, head_transform=False,
                               head_bias=False, tie_embeddings=False, dropout=0.1, pad_token_id=0)
    hydra = {"model": hub_config(num_embeddings="${tokenizer:full_vocab_size}", d_model="${oops}",
                                 _target_="mlm.model_mlm.RotaryTransformerMLMModel")}
    assert mlm_config_from_xlm_core(hydra, xlm_core_state()) == config  # sizes read off the weights
    with pytest.raises(ConversionError, match="rotary_emb_dim=4.*no final LayerNorm"):  # both reasons, one error
        mlm_config_from_xlm_core(hub_config(rotary_emb_dim=4, final_layer_without_normalization=True),
                                 xlm_core_state(rotary=4))


def test_round_trips_are_identity():
    ref = xlm_core_state()
    converted = convert_mlm_xlm_core(ref, hub_config())
    back = convert_to_mlm_xlm_core(converted.state, converted.config)
    hub_layout = [k for k in ref if not (k.endswith("inv_freq") and not k.startswith("encoder.0."))]
    assert list(back.state) == hub_layout and all(torch.equal(back.state[k], ref[k]) for k in hub_layout)
    assert back.config == {k: v for k, v in hub_config().items() if k != "mask_idx"}

    torch.manual_seed(0)
    model = create_mlm_model(converted.config).eval()
    for name, p in model.named_parameters():
        torch.nn.init.zeros_(p) if ".attn." in name and name.endswith(".bias") else torch.nn.init.normal_(p, std=0.1)
    again = convert_mlm_xlm_core(*reversed(tuple(convert_to_mlm_xlm_core(model.state_dict(), model.config))))
    assert again.config == model.config
    assert set(again.state) == set(model.state_dict())
    assert all(torch.equal(again.state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ExportError, match="norm_position='post'.*type_vocab_size=2.*head transform"):
        export(create_mlm_model(MlmConfig(vocab_size=V, model_dim=D, num_layers=1, num_heads=H, norm_position="post",
                                          pos_encoding="learned", type_vocab_size=2, head_transform=True)),
               "unused", format="xlm_core")


def test_lightning_checkpoint_with_ema_and_hub_dir(tmp_path):
    omegaconf = pytest.importorskip("omegaconf")
    from safetensors.torch import save_file

    ref, averaged = xlm_core_state(seed=0), xlm_core_state(seed=1)
    params = [k for k in ref if not k.endswith("inv_freq")]
    state = OrderedDict()
    for k, v in ref.items():
        state["model._orig_mod." + k] = v
        if k.endswith("inv_freq"):
            state["model._orig_mod." + k[:-len("inv_freq")] + "sin"] = torch.zeros(S + 1, 4)
    for k, v in ref.items():
        state["predictor.model." + k] = v
    hyper = omegaconf.OmegaConf.create({"model": hub_config(num_embeddings="${tokenizer:full_vocab_size}")})
    torch.save({"state_dict": state, "hyper_parameters": hyper, "global_step": 9,
                "ema": {"decay": 0.999, "num_updates": 9, "shadow_params": [averaged[k] for k in params]}},
               tmp_path / "last.ckpt")
    ids, mask, positions = batch()
    with torch.no_grad():
        model = xlm.load_model(tmp_path / "last.ckpt", family="mlm", checkpoint_format="xlm_core")
        theirs = xlm_core_forward(averaged, ids, mask, positions)
        assert torch.allclose(model(ids, attention_mask=mask, positions=positions)[mask], theirs[mask], atol=1e-5)
        raw = convert_mlm_xlm_core(*reversed(read_xlm_core(tmp_path / "last.ckpt", use_ema=False)))
        assert torch.allclose(load(raw)(ids, attention_mask=mask, positions=positions)[mask],
                              xlm_core_forward(ref, ids, mask, positions)[mask], atol=1e-5)

    hub = tmp_path / "hub"
    hub.mkdir()
    save_file({k: v for k, v in ref.items() if k == "encoder.0.rotary_emb.inv_freq" or not k.endswith("inv_freq")},
              hub / "model.safetensors")
    (hub / "config.json").write_text(json.dumps(hub_config()))
    converted = get_family("mlm").converters["xlm_core"](hub)
    assert converted.dropped == ["encoder.0.rotary_emb.inv_freq"]
    with torch.no_grad():
        assert torch.allclose(load(converted)(ids, attention_mask=mask, positions=positions)[mask],
                              xlm_core_forward(ref, ids, mask, positions)[mask], atol=1e-5)


def test_misfits_are_reported_together():
    ref = dict(xlm_core_state())
    del ref["encoder.0.norm2.bias"]
    ref["encoder.1.rotary_emb.cos"] = torch.ones(S, 4)  # an old persistent buffer: dropped, not unexpected
    ref["encoder.2.attn_qkv.weight"] = torch.zeros(3 * D, D)
    ref["embed_tokens.weight"] = torch.zeros(V, D + 2)
    with pytest.raises(ConversionError) as err:
        convert_mlm_xlm_core(ref, hub_config())
    assert err.value.missing == ["layers.0.ffn_norm.bias"]
    assert err.value.unexpected == [f"layers.2.attn.{p}_proj.weight" for p in "kqv"]
    assert err.value.wrong_shapes == [("embed_tokens.weight", (V, D + 2), (V, D))]
