"""ARLM <-> xlm-core's RotaryTransformerARLMModel (the "xlm_core" legacy layout): Lightning .ckpt and hub export.

The stand-in checkpoints and the shared layers' forward are `tests/xlm_core_fixtures.py`'s; the ARLM model
(`xlm-models/arlm/model_arlm.py`) adds causal attention at positions cumsum(mask) - 1, a final LayerNorm and an
untied bias-free output linear."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

import xlm
from xlm.errors import ConversionError
from xlm.interop.export import ExportError, export
from xlm.models.arlm import ArlmConfig, create_arlm_model
from xlm.models.arlm.interop import (XLM_CORE, arlm_config_from_xlm_core, convert_arlm_xlm_core,
                                    convert_to_arlm_xlm_core)
from xlm.registry import get_family
from xlm.interop.xlm_core import read_xlm_core

from tests.xlm_core_fixtures import (add_output_layer, assert_round_trip, ema_entry, hub_layout, parameter_keys,
                                     random_tensors, randomize_for_xlm_core_, rotary_transformer_forward,
                                     rotary_transformer_state, write_hub_export, write_lightning_checkpoint)

V, D, L, H, FF, S = 37, 32, 2, 4, 48, 16  # head dim 8


def hub_config(**overrides):
    """What PyTorchModelHubMixin writes: every constructor argument, defaults included."""
    return {"num_embeddings": V, "d_model": D, "num_layers": L, "nhead": H, "padding_idx": 3, "dim_feedforward": FF,
            "dropout": 0.1, "activation": "relu", "layer_norm_eps": 1e-5, "rotary_emb_dim": 4, "max_length": S,
            "force_flash_attn": False, "final_layer_without_normalization": False} | overrides


def xlm_core_state(seed=0, rotary=4):
    """RotaryTransformerARLMModel.state_dict(): keys, shapes and order."""
    r = random_tensors(seed)
    s = rotary_transformer_state(r, vocab=V, dim=D, num_layers=L, ffn_dim=FF, rotary=rotary)
    add_output_layer(s, r, vocab=V, dim=D)
    return s


def xlm_core_forward(s, ids, *, rotary=4, activation="relu", attention_mask=None):
    """RotaryTransformerARLMModel.forward as its loss calls it: causal & padding mask, positions cumsum - 1."""
    batch, seq = ids.shape
    mask = torch.ones(batch, seq, dtype=torch.bool) if attention_mask is None else attention_mask
    positions = (mask.long().cumsum(1) - 1) * mask
    allowed = torch.tril(torch.ones(seq, seq, dtype=torch.bool))[None] & mask[:, None, :]
    x = rotary_transformer_forward(s, ids, allowed=allowed, positions=positions, num_layers=L, num_heads=H,
                                   rotary=rotary, activation=activation)
    x = F.layer_norm(x, (D,), s["output_layer.norm_final.weight"], s["output_layer.norm_final.bias"], 1e-5)
    return x @ s["output_layer.linear.weight"].T


def load(converted):
    model = create_arlm_model(converted.config).eval()
    model.load_state_dict(converted.state, strict=True)
    return model


@pytest.mark.parametrize("activation,rotary", [("relu", 4), ("gelu", 8)])
def test_converted_model_computes_xlm_core(activation, rotary):
    ref = xlm_core_state(rotary=rotary)
    converted = convert_arlm_xlm_core(ref, hub_config(activation=activation, rotary_emb_dim=rotary))
    assert converted.dropped == [f"encoder.{i}.rotary_emb.inv_freq" for i in range(L)]
    assert converted.config.rotary_dim == (None if rotary == D // H else rotary)
    model = load(converted)
    ids = torch.randint(0, V, (3, S))
    with torch.no_grad():
        assert torch.allclose(model(ids), xlm_core_forward(ref, ids, rotary=rotary, activation=activation), atol=1e-5)
        mask = torch.ones(3, S, dtype=torch.bool)
        mask[1, 11:] = False  # right padding: the real tokens' logits agree
        ours = model(ids, attention_mask=mask)
        theirs = xlm_core_forward(ref, ids, rotary=rotary, activation=activation, attention_mask=mask)
        assert torch.allclose(ours[mask], theirs[mask], atol=1e-5)


def test_config_comes_from_the_checkpoint():
    config = arlm_config_from_xlm_core(hub_config(), xlm_core_state())
    assert config == ArlmConfig(vocab_size=V, model_dim=D, num_layers=L, num_heads=H, ffn_dim=FF, max_seq_len=S,
                                pos_encoding="rope", rope_base=10000.0, rotary_dim=4, norm="layernorm", norm_eps=1e-5,
                                activation="relu", bias=True, attn_bias=False, tie_embeddings=False, dropout=0.1,
                                pad_token_id=3, padding_idx=3)
    # a Hydra config (the .ckpt's hyper_parameters) whose tokenizer-derived values stayed interpolation strings
    hydra = {"model": hub_config(num_embeddings="${tokenizer:full_vocab_size}", padding_idx="${tokenizer:pad_token_id}",
                                 dim_feedforward="${eval:${.d_model}*4}",
                                 _target_="arlm.model_arlm.RotaryTransformerARLMModel")}
    assert arlm_config_from_xlm_core(hydra, xlm_core_state()) == dataclasses.replace(config, pad_token_id=0,
                                                                                      padding_idx=0)
    with pytest.raises(ConversionError, match="nhead"):
        arlm_config_from_xlm_core(hub_config(nhead=None), xlm_core_state())
    with pytest.raises(ConversionError, match="final LayerNorm"):
        arlm_config_from_xlm_core(hub_config(final_layer_without_normalization=True), xlm_core_state())
    with pytest.raises(ConversionError, match="RotaryTransformerMLMModel"):
        arlm_config_from_xlm_core(hub_config(_target_="mlm.model_mlm.RotaryTransformerMLMModel"), xlm_core_state())
    with pytest.raises(ConversionError, match="rotary_emb.inv_freq"):  # the config's rotary dim is not the weights'
        convert_arlm_xlm_core(xlm_core_state(rotary=4), hub_config(rotary_emb_dim=8))


def test_round_trips_are_identity():
    ref = xlm_core_state()
    converted = convert_arlm_xlm_core(ref, hub_config())
    # xlm-core's parameters, no more: its attention has no biases, and neither has the converted model's
    assert not any(".attn." in k and k.endswith(".bias") for k in converted.state)
    assert load(converted).num_parameters() == sum(ref[k].numel() for k in parameter_keys(ref))
    back = convert_to_arlm_xlm_core(converted.state, converted.config)
    assert list(back.state) == hub_layout(ref)  # what xlm-core's own safetensors export holds, in its order
    assert all(torch.equal(back.state[k], ref[k]) for k in hub_layout(ref))
    assert back.config == hub_config()

    torch.manual_seed(0)
    model = randomize_for_xlm_core_(create_arlm_model(converted.config).eval())
    assert_round_trip(model, convert_to_arlm_xlm_core, convert_arlm_xlm_core)

    with_biases = create_arlm_model(dataclasses.replace(converted.config, attn_bias=None))  # bias=True: as before
    with pytest.raises(ConversionError, match="attention biases.*attn_bias=False"):
        convert_to_arlm_xlm_core(with_biases.state_dict(), with_biases.config)


class AttributeDictLike(dict):
    """Like Lightning's AttributeDict: a dict subclass the weights-only unpickler does not know."""


def lightning_checkpoint(path, ref, *, hyper, compiled=True, **entries):
    """An older run's .ckpt: compiled, the predictor's duplicate weights, persistent rotary sin/cos, a noise
    schedule buffer."""
    return write_lightning_checkpoint(path, ref, hyper=hyper, compiled=compiled, rotary_tables=("sin", "cos"),
                                      max_length=S, predictor_copy=True,
                                      other_state={"noise_schedule.sigma_max": torch.tensor(20.0)}, epoch=3,
                                      global_step=120, **{"pytorch-lightning_version": "2.4.0"}, **entries)


def test_lightning_checkpoint_with_ema_loads_strictly(tmp_path):
    omegaconf = pytest.importorskip("omegaconf")
    ref, averaged = xlm_core_state(seed=0), xlm_core_state(seed=1)
    hyper = AttributeDictLike(omegaconf.OmegaConf.create({  # an older run: the Hydra config as a DictConfig
        "model": hub_config(num_embeddings="${tokenizer:full_vocab_size}", max_length="${predictor.max_length}",
                            _target_="arlm.model_arlm.RotaryTransformerARLMModel"),
        "predictor": {"max_length": S}, "block_size": S}))
    ema = ema_entry(averaged, num_updates=120, collected_params=None)
    path = lightning_checkpoint(tmp_path / "last.ckpt", ref, hyper=hyper, ema=ema)

    converted = get_family("arlm").converters["xlm_core"](path)
    assert converted.config.vocab_size == V and converted.config.max_seq_len == S
    assert any("EMA" in n for n in converted.notes) and any("_orig_mod" in n for n in converted.notes)
    assert "predictor.model.embed_tokens.weight" in converted.dropped
    assert "noise_schedule.sigma_max" in converted.dropped
    assert "encoder.1.rotary_emb.sin" in converted.dropped
    ids = torch.randint(0, V, (2, S))
    with torch.no_grad():
        assert torch.allclose(load(converted)(ids), xlm_core_forward(averaged, ids), atol=1e-5)
        model = xlm.load_model(path, family="arlm", checkpoint_format="xlm_core")  # strict load through the registry
        assert torch.allclose(model(ids), xlm_core_forward(averaged, ids), atol=1e-5)
        raw = convert_arlm_xlm_core(*reversed(read_xlm_core(path, use_ema=False)))
        assert torch.allclose(load(raw)(ids), xlm_core_forward(ref, ids), atol=1e-5)


def test_plain_hyper_parameters_and_no_ema(tmp_path):
    ref = xlm_core_state()
    hyper = {"model": hub_config(num_embeddings="${tokenizer:full_vocab_size}"), "block_size": S}  # current xlm-core
    path = lightning_checkpoint(tmp_path / "step.ckpt", ref, hyper=hyper, compiled=False)
    converted = XLM_CORE(path)
    assert any("no EMA" in n for n in converted.notes)
    ids = torch.randint(0, V, (2, S))
    with torch.no_grad():
        assert torch.allclose(load(converted)(ids), xlm_core_forward(ref, ids), atol=1e-5)
    with pytest.raises(ConversionError, match="use_ema=True but the checkpoint has no 'ema'"):
        read_xlm_core(path, use_ema=True)


def test_ema_out_of_order_is_an_error(tmp_path):
    ref = xlm_core_state()
    ema = {"decay": 0.999, "num_updates": 1, "shadow_params": [ref[k] for k in reversed(parameter_keys(ref))]}
    path = lightning_checkpoint(tmp_path / "last.ckpt", ref, hyper={"model": hub_config()}, ema=ema)
    with pytest.raises(ConversionError, match="not in the order of the model's parameters"):
        XLM_CORE(path)


def test_hub_export_dir_and_export_back(tmp_path):
    from safetensors.torch import load_file

    ref = xlm_core_state()
    hub = write_hub_export(tmp_path / "hub", ref, hub_config())
    ids = torch.randint(0, V, (2, S))
    with torch.no_grad():
        model = xlm.load_model(hub, family="arlm", checkpoint_format="xlm_core")
        assert torch.allclose(model(ids), xlm_core_forward(ref, ids), atol=1e-5)
        out = export(model, tmp_path / "back", format="xlm_core")
        written_config = json.loads((out / "config.json").read_text())
        assert {k: v for k, v in written_config.items() if k != "torch_dtype"} == hub_config()
        written = load_file(out / "model.safetensors")
        assert set(written) == set(load_file(hub / "model.safetensors"))
        assert all(torch.equal(written[k], ref[k]) for k in written)
        assert torch.allclose(load(XLM_CORE(hub / "model.safetensors"))(ids), model(ids))  # config.json beside it
        assert torch.allclose(load(XLM_CORE(out))(ids), model(ids))
    tied = create_arlm_model(ArlmConfig(vocab_size=V, model_dim=D, num_layers=1, num_heads=H, activation="relu",
                                        attn_bias=False))
    out = export(tied, tmp_path / "tied", format="xlm_core")  # the tied head is written as its own matrix
    with torch.no_grad():
        assert torch.allclose(load(XLM_CORE(out))(ids), tied.eval()(ids), atol=1e-6)
    learned = create_arlm_model(ArlmConfig(vocab_size=V, model_dim=D, num_layers=1, num_heads=H, pos_encoding="learned",
                                           norm="rmsnorm"))
    with pytest.raises(ExportError, match="norm='rmsnorm'.*pos_encoding='learned'"):
        export(learned, tmp_path / "no", format="xlm_core")


def test_misfits_are_reported_together():
    ref = dict(xlm_core_state())
    del ref["encoder.1.mlp.2.bias"]
    ref["encoder.0.attn_qkv.bias"] = torch.zeros(3 * D)
    ref["output_layer.linear.weight"] = torch.zeros(V + 1, D)
    with pytest.raises(ConversionError) as err:
        convert_arlm_xlm_core(ref, hub_config(), source="run/last.ckpt")
    assert err.value.missing == ["layers.1.ffn.down_proj.bias"]
    assert err.value.unexpected == ["encoder.0.attn_qkv.bias"]
    assert err.value.wrong_shapes == [("lm_head.proj.weight", (V + 1, D), (V, D))]
    assert str(err.value).startswith("run/last.ckpt: ")
