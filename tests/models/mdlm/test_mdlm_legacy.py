"""MDLM and xlm-core's MDLMModel (the "xlm_core" legacy layout): read, mapped, and refused for a reason.

The state dicts have xlm-core's exact key names, shapes and order (`xlm-models/mdlm/model_mdlm.py`,
`src/xlm/modules/ddit_simple.py`); its forward is written out here. The key map is checked by running the same
weights through MdlmModel and through xlm-core's math with the reference DiT's residual (the block's input); with
xlm-core's own residual (the adaLN-modulated, normalised input) the two differ, which is why the converter refuses."""

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from xlm.errors import ConversionError
from xlm.interop.keymap import check_mapped
from xlm.interop.export import ExportError, export
from xlm.models.mdlm import MdlmConfig, create_mdlm_model
from xlm.models.mdlm.interop import XLM_CORE, XLM_CORE_KEY_MAP, convert_mdlm_xlm_core
from xlm.registry import get_family
from xlm.interop.xlm_core import read_xlm_core

from tests.xlm_core_fixtures import ema_entry, inv_freq, parameter_keys, random_tensors, write_lightning_checkpoint

V, D, L, H, C, S, FREQ = 29, 32, 2, 4, 16, 12, 256  # head dim 8; cond 16; 256 sigma features as xlm-core fixes


def hub_config(**overrides):
    return {"num_embeddings": V, "d_model": D, "num_layers": L, "nhead": H, "padding_idx": 0, "mask_idx": 1,
            "dim_feedforward": 4 * D, "dropout": 0.1, "activation": "gelu", "layer_norm_eps": 1e-5, "d_cond": C,
            "rotary_emb_dim": D // H, "max_length": S, "force_flash_attn": False} | overrides


def xlm_core_state(seed=0):
    """MDLMModel.state_dict(): keys, shapes and order (a module's buffers before its children)."""
    r = random_tensors(seed)
    s = OrderedDict()
    s["embed_tokens.weight"] = r(V, D)
    s["sigma_map.freqs"] = torch.exp(-math.log(10000) * torch.arange(FREQ // 2) / (FREQ // 2))
    s["sigma_map.mlp.0.weight"], s["sigma_map.mlp.0.bias"] = r(C, FREQ), r(C)
    s["sigma_map.mlp.2.weight"], s["sigma_map.mlp.2.bias"] = r(C, C), r(C)
    for i in range(L):
        p = f"encoder.{i}."
        s[p + "norm1.weight"] = 1 + r(D)
        s[p + "attn_qkv.weight"] = r(3 * D, D)
        s[p + "o_proj.weight"] = r(D, D)
        s[p + "norm2.weight"] = 1 + r(D)
        s[p + "mlp.0.weight"], s[p + "mlp.0.bias"] = r(4 * D, D), r(4 * D)
        s[p + "mlp.2.weight"], s[p + "mlp.2.bias"] = r(D, 4 * D), r(D)
        s[p + "ada_ln_modulations.modulation.weight"] = r(6 * D, C)
        s[p + "ada_ln_modulations.modulation.bias"] = r(6 * D)
        s[p + "rotary_emb.inv_freq"] = inv_freq(D // H)
    s["output_layer.norm_final.weight"] = 1 + r(D)
    s["output_layer.linear.weight"] = r(V, D)
    s["output_layer.adaLN_modulation.modulation.weight"] = r(2 * D, C)
    s["output_layer.adaLN_modulation.modulation.bias"] = r(2 * D)
    return s


def xlm_core_forward(s, ids, noise, attention_mask, *, residual="xlm_core"):
    """MDLMModel.forward (GELU-tanh, full-head rotary). residual="xlm_core" is DDiTLayer's: the branch is added to
    the modulated, normalised input; residual="input" adds it to the block's input, as the reference DiT does."""
    batch, seq = ids.shape
    head = D // H
    args = noise[:, None].float() * s["sigma_map.freqs"][None]
    c = F.linear(torch.cat([args.cos(), args.sin()], -1), s["sigma_map.mlp.0.weight"], s["sigma_map.mlp.0.bias"])
    c = F.silu(F.linear(F.silu(c), s["sigma_map.mlp.2.weight"], s["sigma_map.mlp.2.bias"]))
    positions = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
    angles = positions[..., None].float() * s["encoder.0.rotary_emb.inv_freq"]
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]

    def rope(t):
        t1, t2 = t.chunk(2, dim=-1)
        return torch.cat([t1 * cos - t2 * sin, t2 * cos + t1 * sin], dim=-1)

    def norm(t, w):
        return F.layer_norm(t, (D,), eps=1e-5) * w

    x = s["embed_tokens.weight"][ids]
    for i in range(L):
        p = f"encoder.{i}."
        mods = F.linear(c, s[p + "ada_ln_modulations.modulation.weight"], s[p + "ada_ln_modulations.modulation.bias"])
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mods[:, None].chunk(6, dim=2)
        h = norm(x, s[p + "norm1.weight"]) * (1 + scale_a) + shift_a
        q, k, v = (t.view(batch, seq, H, head).transpose(1, 2) for t in (h @ s[p + "attn_qkv.weight"].T).chunk(3, -1))
        scores = rope(q) @ rope(k).transpose(-1, -2) / math.sqrt(head)
        attended = scores.masked_fill(~attention_mask[:, None, None, :], float("-inf")).softmax(-1) @ v
        branch = attended.transpose(1, 2).reshape(batch, seq, D) @ s[p + "o_proj.weight"].T
        x = branch * gate_a + (h if residual == "xlm_core" else x)
        h = norm(x, s[p + "norm2.weight"]) * (1 + scale_m) + shift_m
        h = F.gelu(F.linear(h, s[p + "mlp.0.weight"], s[p + "mlp.0.bias"]), approximate="tanh")
        x = F.linear(h, s[p + "mlp.2.weight"], s[p + "mlp.2.bias"]) * gate_m + x
    o = "output_layer."
    shift, scale = F.linear(c, s[o + "adaLN_modulation.modulation.weight"],
                            s[o + "adaLN_modulation.modulation.bias"])[:, None].chunk(2, dim=2)
    return (norm(x, s[o + "norm_final.weight"]) * (1 + scale) + shift) @ s[o + "linear.weight"].T


def result_dropped(ref):
    return {k for k in ref if k == "sigma_map.freqs" or k.endswith("inv_freq")}


def mapped_model(ref):
    """MdlmModel holding xlm-core's weights through XLM_CORE_KEY_MAP (what the converter would load)."""
    result = XLM_CORE_KEY_MAP.apply(ref)
    result.state["output_layer.linear.bias"] = torch.zeros(V)
    config = MdlmConfig(vocab_size=V, max_seq_len=S, model_dim=D, num_layers=L, num_heads=H, cond_dim=C, mlp_ratio=4,
                        sigma_embed_dim=FREQ, time_conditioning=True)
    model = create_mdlm_model(config).eval()
    check_mapped(result, model)
    model.load_state_dict(result.state, strict=True)
    assert set(result.dropped) == result_dropped(ref)
    return model


def test_key_map_is_right_and_the_residual_is_what_differs():
    ref = xlm_core_state()
    model = mapped_model(ref)
    ids = torch.randint(0, V, (3, S))
    noise = torch.tensor([0.1, 1.3, 4.0])
    mask = torch.ones(3, S, dtype=torch.bool)
    mask[0, :3] = False  # left padding
    with torch.no_grad():
        ours = model(ids, noise, attention_mask=mask)
    assert torch.allclose(ours[mask], xlm_core_forward(ref, ids, noise, mask, residual="input")[mask], atol=1e-5)
    assert not torch.allclose(ours[mask], xlm_core_forward(ref, ids, noise, mask)[mask], atol=1e-2)
    back = XLM_CORE_KEY_MAP.inverse().apply({k: v for k, v in model.state_dict().items()
                                             if k != "output_layer.linear.bias"})
    assert not back.unmatched and set(back.state) == {k for k in ref if k not in result_dropped(ref)}
    assert all(torch.equal(back.state[k], ref[k]) for k in back.state)


def test_converter_refuses_and_says_why():
    with pytest.raises(ConversionError) as err:
        convert_mdlm_xlm_core(xlm_core_state(), hub_config(activation="relu"), source="run/last.ckpt")
    message = str(err.value)
    assert "adaLN-modulated, normalised input" in message and "activation='relu'" in message
    assert message.startswith("run/last.ckpt: ")
    with pytest.raises(ConversionError, match="rotary_emb.inv_freq"):
        convert_mdlm_xlm_core(xlm_core_state(), hub_config(rotary_emb_dim=4))
    model = mapped_model(xlm_core_state())
    with pytest.raises(ExportError, match="xlm_core layout cannot hold"):
        export(model, "unused", format="xlm_core")


def test_lightning_checkpoint_is_read_with_its_ema(tmp_path):
    omegaconf = pytest.importorskip("omegaconf")
    ref, averaged = xlm_core_state(seed=0), xlm_core_state(seed=1)
    params = parameter_keys(ref)  # buffers have no EMA shadow
    hyper = omegaconf.OmegaConf.create({"model": hub_config(num_embeddings="${tokenizer:full_vocab_size}",
                                                            _target_="mdlm.model_mdlm.MDLMModel")})
    write_lightning_checkpoint(tmp_path / "last.ckpt", ref, hyper=hyper,
                               other_state={"noise_schedule.sigma_min": torch.tensor(0.0),
                                            "noise_schedule.sigma_max": torch.tensor(20.0)},
                               ema=ema_entry(averaged, num_updates=5))
    config, read = read_xlm_core(tmp_path / "last.ckpt")
    assert config["num_embeddings"] == "${tokenizer:full_vocab_size}" and config["d_cond"] == C
    assert list(read) == list(ref)
    assert all(torch.equal(read[k], averaged[k] if k in params else ref[k]) for k in ref)
    with pytest.raises(ConversionError, match="adaLN-modulated"):
        get_family("mdlm").converters["xlm_core"](tmp_path / "last.ckpt")
    assert XLM_CORE.name == "xlm_core"
