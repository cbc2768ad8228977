"""MDLM <-> xlm-core's MDLMModel (the "xlm_core" legacy layout): Lightning .ckpt with EMA, hub export, both ways.

The stand-in checkpoints and MDLMModel's forward are `tests/xlm_core_fixtures.py`'s (`ddit_state`, `ddit_forward`,
written from `src/xlm/modules/ddit_simple.py`): its DDiTLayer adds the attention branch to the modulated, normalised
input, its MLP is `dim_feedforward` wide (ReLU by default), its rotary covers the first `rotary_emb_dim` dims of each
head and its output linear has no bias. The converted MdlmModel must compute the same logits."""

import dataclasses

import pytest
import torch

import xlm
from xlm.errors import ConversionError
from xlm.interop.export import ExportError, export
from xlm.interop.xlm_core import read_xlm_core
from xlm.models.mdlm import MdlmConfig, create_mdlm_model
from xlm.models.mdlm.interop import (XLM_CORE, convert_mdlm_xlm_core, convert_to_mdlm_xlm_core,
                                     xlm_core_export_problems)
from xlm.registry import get_family

from tests.xlm_core_fixtures import (assert_round_trip, ddit_forward, ddit_state, ema_entry, hub_layout, inv_freq,
                                     parameter_keys, random_tensors, randomize_for_xlm_core_, write_hub_export,
                                     write_lightning_checkpoint)

V, D, L, H, C, S = 29, 32, 2, 4, 16, 12  # head dim 8; cond 16; xlm-core fixes 256 sigma features
TARGET = "mdlm.model_mdlm.MDLMModel"


def hub_config(**overrides):
    """What PyTorchModelHubMixin writes for MDLMModel: its constructor arguments, defaults included."""
    return {"num_embeddings": V, "d_model": D, "num_layers": L, "nhead": H, "padding_idx": 0, "mask_idx": 1,
            "dim_feedforward": 4 * D, "dropout": 0.1, "activation": "relu", "layer_norm_eps": 1e-5, "d_cond": C,
            "rotary_emb_dim": D // H, "max_length": S, "force_flash_attn": False} | overrides


def xlm_core_state(seed=0, *, ffn_dim=4 * D, rotary=D // H):
    return ddit_state(random_tensors(seed), vocab=V, dim=D, num_layers=L, ffn_dim=ffn_dim, cond=C, rotary=rotary)


def xlm_core_forward(s, ids, noise, mask, *, rotary=D // H, activation="relu", eps=1e-5):
    return ddit_forward(s, ids, noise, attention_mask=mask, num_layers=L, num_heads=H, rotary=rotary,
                        activation=activation, eps=eps)


def batch():
    ids = torch.randint(0, V, (3, S))
    noise = torch.tensor([0.1, 1.3, 4.0])  # total noise sigma(t), one per row
    mask = torch.ones(3, S, dtype=torch.bool)
    mask[0, :3] = False  # a left-padded row
    return ids, noise, mask


def load(converted):
    model = create_mdlm_model(converted.config).eval()
    model.load_state_dict(converted.state, strict=True)
    return model


@pytest.mark.parametrize(("activation", "rotary", "ffn_dim"), [("relu", D // H, 4 * D), ("gelu", 4, 48)],
                         ids=["defaults", "gelu-partial_rotary-ffn48"])
def test_converted_model_computes_xlm_core(activation, rotary, ffn_dim):
    ref = xlm_core_state(ffn_dim=ffn_dim, rotary=rotary)
    converted = convert_mdlm_xlm_core(ref, hub_config(activation=activation, rotary_emb_dim=rotary,
                                                      dim_feedforward=ffn_dim, layer_norm_eps=1e-6))
    model = load(converted)
    ids, noise, mask = batch()
    with torch.no_grad():
        ours = model(ids, noise, attention_mask=mask)
        theirs = xlm_core_forward(ref, ids, noise, mask, rotary=rotary, activation=activation, eps=1e-6)
        assert (ours[mask] - theirs[mask]).abs().max() < 1e-5
        full = torch.ones_like(mask)
        assert (model(ids, noise) - xlm_core_forward(ref, ids, noise, full, rotary=rotary, activation=activation,
                                                     eps=1e-6)).abs().max() < 1e-5
        # the wiring matters: the reference DiT's residual over the same weights computes something else
        block_input = load(dataclasses.replace(converted, config=dataclasses.replace(converted.config,
                                                                                     residual="block_input")))
        assert not torch.allclose(block_input(ids, noise, attention_mask=mask)[mask], theirs[mask], atol=1e-2)


def test_config_comes_from_the_checkpoint():
    converted = convert_mdlm_xlm_core(xlm_core_state(rotary=4), hub_config(rotary_emb_dim=4))
    assert converted.config == MdlmConfig(
        vocab_size=V, max_seq_len=S, model_dim=D, num_layers=L, num_heads=H, cond_dim=C, ffn_dim=4 * D,
        activation="relu", residual="modulated_input", rotary_dim=4, output_bias=False, sigma_embed_dim=256,
        rope_base=10000.0, norm_eps=1e-5, dropout=0.1, attention_dropout=0.1, time_conditioning=True)
    assert set(converted.dropped) == {"sigma_map.freqs"} | {f"encoder.{i}.rotary_emb.inv_freq" for i in range(L)}
    hydra = {"model": hub_config(num_embeddings="${tokenizer:full_vocab_size}", d_cond=None, dim_feedforward=None,
                                 _target_=TARGET)}
    config = convert_mdlm_xlm_core(xlm_core_state(), hydra).config  # MDLMModel's own defaults for the None ones
    assert (config.vocab_size, config.cond_dim, config.hidden_ffn_dim) == (V, D // 2, 4 * D)


def test_round_trips_are_identity():
    ref = xlm_core_state(ffn_dim=48, rotary=4)
    converted = convert_mdlm_xlm_core(ref, hub_config(dim_feedforward=48, rotary_emb_dim=4, activation="gelu"))
    back = convert_to_mdlm_xlm_core(converted.state, converted.config)
    assert list(back.state) == hub_layout(ref)  # with sigma_map.freqs and one rotary buffer, where MDLMModel has them
    assert all(torch.equal(back.state[k], ref[k]) for k in hub_layout(ref))
    expected = {k: v for k, v in hub_config(dim_feedforward=48, rotary_emb_dim=4, activation="gelu").items()
                if k not in ("padding_idx", "mask_idx")}
    assert back.config == expected

    torch.manual_seed(0)
    model = randomize_for_xlm_core_(create_mdlm_model(converted.config).eval())
    assert_round_trip(model, convert_to_mdlm_xlm_core, convert_mdlm_xlm_core)


def test_what_xlm_core_cannot_hold_is_refused_with_every_reason():
    reference_dit = create_mdlm_model(MdlmConfig(vocab_size=V, model_dim=D, num_layers=1, num_heads=H, cond_dim=C,
                                                 sigma_embed_dim=32, activation="gelu", attention_dropout=0.2))
    problems = xlm_core_export_problems(reference_dit.config)
    assert problems == ["sigma_embed_dim=32 (xlm-core's MDLMModel fixes 256)",
                        "residual='block_input' (xlm-core's MDLMModel fixes 'modulated_input')",
                        "output_bias=True (xlm-core's MDLMModel fixes False)",
                        "time_conditioning=False (xlm-core's MDLMModel fixes True)",
                        "activation='gelu' (xlm-core has relu and gelu_tanh)",
                        "attention_dropout=0.2 differs from dropout=0.0 (xlm-core drops both at its one rate)"]
    with pytest.raises(ExportError, match="xlm_core layout cannot hold.*residual='block_input'"):
        export(reference_dit, "unused", format="xlm_core")
    xlm_core_like = load(convert_mdlm_xlm_core(xlm_core_state(), hub_config()))
    with pytest.raises(ExportError, match="mdlm_reference layout cannot hold.*residual='modulated_input'"):
        export(xlm_core_like, "unused", format="mdlm_reference")


def test_buffers_and_class_must_be_xlm_cores():
    with pytest.raises(ConversionError, match="rotary_emb.inv_freq"):
        convert_mdlm_xlm_core(xlm_core_state(), hub_config(rotary_emb_dim=4))
    bad = dict(xlm_core_state())
    bad["sigma_map.freqs"] = bad["sigma_map.freqs"] * 2
    with pytest.raises(ConversionError, match="sigma_map.freqs is not the table of 256"):
        convert_mdlm_xlm_core(bad, hub_config(), source="run/last.ckpt")
    with pytest.raises(ConversionError, match="RotaryTransformerMLMModel, which this converter does not read"):
        convert_mdlm_xlm_core(xlm_core_state(), hub_config(_target_="mlm.model_mlm.RotaryTransformerMLMModel"))


def test_misfits_are_reported_together():
    ref = dict(xlm_core_state())
    del ref["encoder.0.norm2.weight"]
    ref["encoder.2.attn_qkv.weight"] = torch.zeros(3 * D, D)
    ref["output_layer.linear.bias"] = torch.zeros(V)  # MDLMModel's output linear has none
    ref["embed_tokens.weight"] = torch.zeros(V, D + 2)
    with pytest.raises(ConversionError) as err:
        convert_mdlm_xlm_core(ref, hub_config())
    assert err.value.missing == ["blocks.0.norm2.weight"]
    assert set(err.value.unexpected) == {"blocks.2.attn_qkv.weight", "output_layer.linear.bias"}
    assert err.value.wrong_shapes == [("vocab_embed.weight", (V, D + 2), (V, D))]


def test_lightning_checkpoint_with_ema_and_hub_dir(tmp_path):
    omegaconf = pytest.importorskip("omegaconf")
    ref, averaged = xlm_core_state(seed=0), xlm_core_state(seed=1)
    params = parameter_keys(ref)  # buffers have no EMA shadow
    hyper = omegaconf.OmegaConf.create({"model": hub_config(num_embeddings="${tokenizer:full_vocab_size}",
                                                            _target_=TARGET)})
    write_lightning_checkpoint(tmp_path / "last.ckpt", ref, hyper=hyper, compiled=True, predictor_copy=True,
                               other_state={"noise_schedule.sigma_min": torch.tensor(0.0),
                                            "noise_schedule.sigma_max": torch.tensor(20.0)},
                               ema=ema_entry(averaged, num_updates=5))
    config, read = read_xlm_core(tmp_path / "last.ckpt")
    assert config["num_embeddings"] == "${tokenizer:full_vocab_size}" and config["d_cond"] == C
    assert list(read) == list(ref)
    assert all(torch.equal(read[k], averaged[k] if k in params else ref[k]) for k in ref)
    ids, noise, mask = batch()
    with torch.no_grad():
        model = xlm.load_model(tmp_path / "last.ckpt")  # detected as mdlm/xlm_core by its sigma_map and _target_
        assert type(model).__name__ == "MdlmModel"
        theirs = xlm_core_forward(averaged, ids, noise, mask)
        assert (model(ids, noise, attention_mask=mask)[mask] - theirs[mask]).abs().max() < 1e-5

    hub = write_hub_export(tmp_path / "hub", ref, hub_config())
    converted = get_family("mdlm").converters["xlm_core"](hub)
    assert sorted(converted.dropped) == ["encoder.0.rotary_emb.inv_freq", "sigma_map.freqs"]
    with torch.no_grad():
        assert (load(converted)(ids, noise, attention_mask=mask)[mask]
                - xlm_core_forward(ref, ids, noise, mask)[mask]).abs().max() < 1e-5
    assert XLM_CORE.name == "xlm_core" and torch.equal(ref["encoder.0.rotary_emb.inv_freq"], inv_freq(D // H))
