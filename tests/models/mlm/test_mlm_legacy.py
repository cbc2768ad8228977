"""MLM <-> xlm-core's RotaryTransformerMLMModel (the "xlm_core" legacy layout): Lightning .ckpt and hub export.

The stand-in checkpoints and the shared layers' forward are `tests/xlm_core_fixtures.py`'s; the MLM model
(`xlm-models/mlm/model_mlm.py`) adds bidirectional attention under a key-padding mask at the given positions, rotary
over the first `rotary_emb_dim` dims of each head, a final LayerNorm and an untied bias-free linear."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import xlm
from xlm.errors import ConversionError
from xlm.interop.export import ExportError, export
from xlm.models.mlm import MlmConfig, create_mlm_model
from xlm.models.mlm.interop import (XLM_CORE_KEY_MAP, convert_mlm_xlm_core, convert_to_mlm_xlm_core,
                                   mlm_config_from_xlm_core)
from xlm.models.mlm.loss import mlm_loss
from xlm.registry import get_family
from xlm.interop.xlm_core import read_xlm_core

from tests import xlm_core_fixtures
from tests.xlm_core_fixtures import (add_output_layer, assert_round_trip, ema_entry, hub_layout, parameter_keys,
                                     random_tensors, randomize_for_xlm_core_, rotary_transformer_forward,
                                     rotary_transformer_state, write_hub_export, write_lightning_checkpoint)

V, D, L, H, FF, S = 41, 32, 2, 4, 64, 12  # head dim 8


def hub_config(**overrides):
    return {"num_embeddings": V, "d_model": D, "num_layers": L, "nhead": H, "padding_idx": 0, "mask_idx": 1,
            "dim_feedforward": FF, "dropout": 0.1, "activation": "relu", "layer_norm_eps": 1e-5, "rotary_emb_dim": 8,
            "max_length": S, "force_flash_attn": False, "use_flex_attn": False,
            "final_layer_without_normalization": False} | overrides


def xlm_core_state(seed=0, rotary=8):
    r = random_tensors(seed)
    s = rotary_transformer_state(r, vocab=V, dim=D, num_layers=L, ffn_dim=FF, rotary=rotary)
    add_output_layer(s, r, vocab=V, dim=D)
    return s


def xlm_core_forward(s, ids, attention_mask, positions, *, activation="relu", eps=1e-5, rotary=D // H,
                     padding_idx=None):
    x = rotary_transformer_forward(s, ids, allowed=attention_mask[:, None, :], positions=positions, num_layers=L,
                                   num_heads=H, rotary=rotary, activation=activation, eps=eps, padding_idx=padding_idx)
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


@pytest.mark.parametrize(("activation", "rotary"), [("relu", 8), ("gelu", 8), ("relu", 4)],
                         ids=["relu", "gelu", "partial_rotary"])
def test_converted_model_computes_xlm_core(activation, rotary):
    ref = xlm_core_state(rotary=rotary)
    converted = convert_mlm_xlm_core(ref, hub_config(activation=activation, layer_norm_eps=1e-6,
                                                     rotary_emb_dim=rotary))
    assert converted.config.rotary_dim == (None if rotary == D // H else rotary)
    model = load(converted)
    ids, mask, positions = batch()
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, positions=positions)
        theirs = xlm_core_forward(ref, ids, mask, positions, activation=activation, eps=1e-6, rotary=rotary)
        assert torch.allclose(ours[mask], theirs[mask], atol=1e-5)
        full = torch.ones_like(mask)
        plain = torch.arange(S).expand(3, S)
        assert torch.allclose(model(ids), xlm_core_forward(ref, ids, full, plain, activation=activation, eps=1e-6,
                                                           rotary=rotary), atol=1e-5)
        if rotary != D // H:  # rotating whole heads instead is another function
            assert not torch.allclose(ours[mask], xlm_core_forward(ref, ids, mask, positions, eps=1e-6)[mask],
                                      atol=1e-3)


def test_config_comes_from_the_checkpoint():
    config = mlm_config_from_xlm_core(hub_config(), xlm_core_state())
    assert config == MlmConfig(vocab_size=V, model_dim=D, num_layers=L, num_heads=H, ffn_dim=FF, max_seq_len=S,
                               norm_position="pre", pos_encoding="rope", rope_base=10000.0, type_vocab_size=0,
                               norm="layernorm", norm_eps=1e-5, activation="relu", bias=True, attn_bias=False,
                               head_transform=False, head_bias=False, tie_embeddings=False, dropout=0.1, pad_token_id=0,
                               padding_idx=0)
    hydra = {"model": hub_config(num_embeddings="${tokenizer:full_vocab_size}", d_model="${oops}",
                                 _target_="mlm.model_mlm.RotaryTransformerMLMModel")}
    assert mlm_config_from_xlm_core(hydra, xlm_core_state()) == config  # sizes read off the weights
    assert mlm_config_from_xlm_core(hub_config(rotary_emb_dim=4), xlm_core_state(rotary=4)) == dataclasses.replace(
        config, rotary_dim=4)
    with pytest.raises(ConversionError, match="no final LayerNorm"):
        mlm_config_from_xlm_core(hub_config(final_layer_without_normalization=True), xlm_core_state())


@pytest.mark.parametrize("rotary", [8, 4], ids=["whole_heads", "partial_rotary"])
def test_round_trips_are_identity(rotary):
    ref = xlm_core_state(rotary=rotary)
    converted = convert_mlm_xlm_core(ref, hub_config(rotary_emb_dim=rotary))
    # xlm-core's parameters, no more: its attention has no biases, and neither has the converted model's
    assert not any(".attn." in k and k.endswith(".bias") for k in converted.state)
    assert load(converted).num_parameters() == sum(ref[k].numel() for k in parameter_keys(ref))
    back = convert_to_mlm_xlm_core(converted.state, converted.config)
    assert list(back.state) == hub_layout(ref) and all(torch.equal(back.state[k], ref[k]) for k in hub_layout(ref))
    assert back.config == {k: v for k, v in hub_config(rotary_emb_dim=rotary).items() if k != "mask_idx"}

    torch.manual_seed(0)
    model = randomize_for_xlm_core_(create_mlm_model(converted.config).eval())
    assert_round_trip(model, convert_to_mlm_xlm_core, convert_mlm_xlm_core)
    with pytest.raises(ExportError, match="norm_position='post'.*type_vocab_size=2.*head transform"):
        export(create_mlm_model(MlmConfig(vocab_size=V, model_dim=D, num_layers=1, num_heads=H, norm_position="post",
                                          pos_encoding="learned", type_vocab_size=2, head_transform=True)),
               "unused", format="xlm_core")


@pytest.mark.parametrize("use_num_masked_factor", [False, True])
def test_with_xlm_cores_settings_loss_and_gradients_are_xlm_cores(use_num_masked_factor):
    """MLMLoss on the batch its seq2seq collator builds (every column attended, the [PAD]s after [EOS] too), against
    mlm_loss on the same batch; xlm-core's factor is applied as its code does, right for one row only."""
    ref = xlm_core_state()
    for key in parameter_keys(ref):
        ref[key].requires_grad_()
    model = load(convert_mlm_xlm_core({k: v.detach() for k, v in ref.items()}, hub_config()))
    pad, mask, bos, eos = 0, 1, 2, 3  # hub_config's padding_idx and mask_idx
    prompts, targets, masked = [[10, 11, 12], [13], [14, 15]], [[20, 21], [22, 23, 24], [25]], [[5, 7], [3, 5], [4]]
    rows = 1 if use_num_masked_factor else 3
    theirs = xlm_core_fixtures.mlm_seq2seq_batch(prompts[:rows], targets[:rows], masked[:rows], pad=pad, mask=mask,
                                                 bos=bos, eos=eos, width=S)
    positions = (theirs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
    logits = xlm_core_forward(ref, theirs["input_ids"], theirs["attention_mask"], positions, padding_idx=pad)
    expected = xlm_core_fixtures.mlm_loss(logits, theirs, mask=mask, use_num_masked_factor=use_num_masked_factor)
    ours = {**theirs, "masked": theirs["input_ids"] == mask}
    weighting = "num_masked_factor" if use_num_masked_factor else "none"
    loss = mlm_loss(model, ours, weighting=weighting)["loss"]
    assert torch.allclose(loss, expected, atol=1e-5)

    expected.backward()
    loss.backward()
    grads = XLM_CORE_KEY_MAP.inverse().apply({k: p.grad for k, p in model.named_parameters()}).state
    assert set(grads) == set(parameter_keys(ref))
    for key, grad in grads.items():
        assert torch.allclose(grad, ref[key].grad, rtol=1e-4, atol=1e-6), key
    # the [PAD]s are attended: without padding_idx (as xlm builds its own models) their row would train
    assert model.embed_tokens.weight.grad[pad].eq(0).all()
    trains_pad = create_mlm_model(dataclasses.replace(model.config, padding_idx=None)).eval()
    trains_pad.load_state_dict(model.state_dict())
    mlm_loss(trains_pad, ours, weighting=weighting)["loss"].backward()
    assert trains_pad.embed_tokens.weight.grad[pad].abs().sum() > 0


def test_lightning_checkpoint_with_ema_and_hub_dir(tmp_path):
    omegaconf = pytest.importorskip("omegaconf")
    ref, averaged = xlm_core_state(seed=0), xlm_core_state(seed=1)
    hyper = omegaconf.OmegaConf.create({"model": hub_config(num_embeddings="${tokenizer:full_vocab_size}")})
    write_lightning_checkpoint(tmp_path / "last.ckpt", ref, hyper=hyper, compiled=True, rotary_tables=("sin",),
                               max_length=S, predictor_copy=True, global_step=9,
                               ema=ema_entry(averaged, decay=0.999, num_updates=9))
    ids, mask, positions = batch()
    with torch.no_grad():
        model = xlm.load_model(tmp_path / "last.ckpt", family="mlm", checkpoint_format="xlm_core")
        theirs = xlm_core_forward(averaged, ids, mask, positions)
        assert torch.allclose(model(ids, attention_mask=mask, positions=positions)[mask], theirs[mask], atol=1e-5)
        raw = convert_mlm_xlm_core(*reversed(read_xlm_core(tmp_path / "last.ckpt", use_ema=False)))
        assert torch.allclose(load(raw)(ids, attention_mask=mask, positions=positions)[mask],
                              xlm_core_forward(ref, ids, mask, positions)[mask], atol=1e-5)

    hub = write_hub_export(tmp_path / "hub", ref, hub_config())
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
