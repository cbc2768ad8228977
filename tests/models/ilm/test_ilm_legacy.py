"""ILM <-> xlm-core's RotaryTransformerILMModelWithStoppingClassification (the "xlm_core" legacy layout, as of
dhruveshpatel/ilm-owt): hub export, Lightning .ckpt with EMA, cards.

The stand-in checkpoints and the shared layers' forward are `tests/xlm_core_fixtures.py`'s; the ILM model
(`xlm-models/ilm/model_ilm.py`) adds bidirectional attention under a key-padding mask at the given positions, token
logits through an optional final LayerNorm, and the stop logits from the last block's output at the [CLS] column
(column 0, or `cls_position` in its left-padded prefix batches) through x + mlp(norm(x)) (d -> 2d -> d, tanh) and a
bias-free 2-way linear."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import xlm
from xlm.data.tokenizers import WordTokenizer
from xlm.errors import ConversionError
from xlm.interop.export import export
from xlm.models.ilm import IlmConfig, create_ilm_model
from xlm.models.ilm.collators import IlmSeq2SeqCollator
from xlm.models.ilm.interop import (XLM_CORE, XLM_CORE_KEY_MAP, convert_ilm_xlm_core, convert_to_ilm_xlm_core,
                                   ilm_config_from_xlm_core)
from xlm.models.ilm.loss import ilm_loss
from xlm.registry import get_family
from xlm.interop.xlm_core import read_xlm_core

from tests import xlm_core_fixtures
from tests.xlm_core_fixtures import (add_output_layer, assert_round_trip, ema_entry, hub_layout, parameter_keys,
                                     random_tensors, randomize_for_xlm_core_, rotary_transformer_forward,
                                     rotary_transformer_state, write_hub_export, write_lightning_checkpoint)

V, D, L, H, FF, S = 43, 32, 2, 4, 64, 14  # head dim 8
TARGET = "ilm.model_ilm.RotaryTransformerILMModelWithStoppingClassification"


def hub_config(**overrides):
    """What PyTorchModelHubMixin writes for the stopping ILM: its constructor arguments, defaults included."""
    return {"num_embeddings": V, "d_model": D, "num_layers": L, "nhead": H, "padding_idx": 0, "mask_idx": 1,
            "dim_feedforward": FF, "dropout": 0.1, "activation": "relu", "layer_norm_eps": 1e-5, "rotary_emb_dim": 4,
            "max_length": S, "force_flash_attn": False, "final_layer_without_normalization": True} | overrides


def xlm_core_state(seed=0, rotary=4, final_norm=False, classes=2):
    """RotaryTransformerILMModelWithStoppingClassification.state_dict(): keys, shapes and order."""
    r = random_tensors(seed)
    s = rotary_transformer_state(r, vocab=V, dim=D, num_layers=L, ffn_dim=FF, rotary=rotary)
    add_output_layer(s, r, vocab=V, dim=D, final_norm=final_norm)
    o = "length_output_layer."
    s[o + "norm_final.weight"], s[o + "norm_final.bias"] = 1 + r(D), r(D)
    s[o + "mlp.0.weight"], s[o + "mlp.0.bias"] = r(2 * D, D), r(2 * D)
    s[o + "mlp.2.weight"], s[o + "mlp.2.bias"] = r(D, 2 * D), r(D)
    s[o + "linear.weight"] = r(classes, D)
    return s


def xlm_core_forward(s, ids, attention_mask, positions, *, rotary=4, activation="relu", cls_position=None,
                     padding_idx=None):
    """(vocab_logits, length_logits) of the stopping ILM: the length head reads column 0, or `cls_position`."""
    x = rotary_transformer_forward(s, ids, allowed=attention_mask[:, None, :], positions=positions, num_layers=L,
                                   num_heads=H, rotary=rotary, activation=activation, padding_idx=padding_idx)
    out = x
    if "output_layer.norm_final.weight" in s:
        out = F.layer_norm(x, (D,), s["output_layer.norm_final.weight"], s["output_layer.norm_final.bias"], 1e-5)
    vocab_logits = out @ s["output_layer.linear.weight"].T
    o = "length_output_layer."
    cls = x[:, :1] if cls_position is None else x.gather(1, cls_position[:, None, None].expand(-1, -1, D))
    h = F.layer_norm(cls, (D,), s[o + "norm_final.weight"], s[o + "norm_final.bias"], 1e-5)
    h = F.linear(torch.tanh(F.linear(h, s[o + "mlp.0.weight"], s[o + "mlp.0.bias"])), s[o + "mlp.2.weight"],
                 s[o + "mlp.2.bias"])
    return vocab_logits, ((cls + h) @ s[o + "linear.weight"].T).squeeze(1)


def batch():
    ids = torch.randint(0, V, (3, S))
    mask = torch.ones(3, S, dtype=torch.bool)
    mask[2, 9:] = False  # a right-padded row
    positions = torch.arange(S).expand(3, S).clone()
    positions[1] = torch.randperm(S)  # the sampler appends inserted tokens at the end: positions are explicit
    return ids, mask, positions


def load(converted):
    model = create_ilm_model(converted.config).eval()
    model.load_state_dict(converted.state, strict=True)
    return model


def assert_same(model, ref, *, rotary=4, activation="relu"):
    ids, mask, positions = batch()
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, positions=positions)
    vocab, stop = xlm_core_forward(ref, ids, mask, positions, rotary=rotary, activation=activation)
    assert torch.allclose(ours.token_logits[mask], vocab[mask], atol=1e-5)
    assert torch.allclose(ours.stop_logits, stop, atol=1e-5)


@pytest.mark.parametrize("activation,rotary,final_norm", [("relu", 4, False), ("gelu", 8, True)])
def test_converted_model_computes_xlm_core(activation, rotary, final_norm):
    ref = xlm_core_state(rotary=rotary, final_norm=final_norm)
    converted = convert_ilm_xlm_core(ref, hub_config(activation=activation, rotary_emb_dim=rotary,
                                                     final_layer_without_normalization=not final_norm))
    assert converted.config.final_norm is final_norm
    assert converted.dropped == [f"encoder.{i}.rotary_emb.inv_freq" for i in range(L)]
    assert_same(load(converted), ref, rotary=rotary, activation=activation)


def prefix_batch():
    """xlm-core's prefix layout (prepare_prefix_ids: left-padded [CLS] prompt [BOS]), then what follows, right-padded;
    `cls_position` is the left padding's width."""
    cls, bos = 2, 3  # any ids: the network does not know which are special
    prompts, tails = [[9, 10, 11, 12], [13], [14, 15]], [[20, 21], [22, 23, 24], []]
    width = 2 + max(map(len, prompts))
    ids = torch.zeros(3, width + 3, dtype=torch.long)
    for b, (prompt, tail) in enumerate(zip(prompts, tails)):
        pad = width - 2 - len(prompt)
        ids[b, pad: width + len(tail)] = torch.tensor([cls, *prompt, bos, *tail])
    mask = ids != 0
    cls_position = torch.tensor([width - 2 - len(p) for p in prompts])
    return ids, mask, (mask.long().cumsum(-1) - 1).clamp(min=0), cls_position


def test_stop_logits_are_read_at_cls_position():
    ref = xlm_core_state()
    model = load(convert_ilm_xlm_core(ref, hub_config()))
    ids, mask, positions, cls_position = prefix_batch()
    assert cls_position.tolist() == [0, 3, 2]
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, positions=positions, cls_position=cls_position)
        at_zero = model(ids, attention_mask=mask, positions=positions).stop_logits
        with pytest.raises(ValueError, match="cls_position must have one column per row"):
            model(ids, attention_mask=mask, cls_position=cls_position[:2])
        with pytest.raises(ValueError, match=r"cls_position must be columns in \[0, 9\)"):
            model(ids, attention_mask=mask, cls_position=torch.tensor([0, 9, 1]))
    vocab, stop = xlm_core_forward(ref, ids, mask, positions, cls_position=cls_position)
    assert torch.allclose(ours.token_logits[mask], vocab[mask], atol=1e-5)
    assert (ours.stop_logits - stop).abs().max() < 1e-5
    assert torch.equal(at_zero[0], ours.stop_logits[0])  # [CLS] in column 0: the same
    assert not torch.allclose(at_zero[1:], stop[1:], atol=1e-3)  # column 0 is padding there


def test_config_comes_from_the_checkpoint():
    config = ilm_config_from_xlm_core(hub_config(), xlm_core_state())
    assert config == IlmConfig(vocab_size=V, model_dim=D, num_layers=L, num_heads=H, ffn_dim=FF, max_seq_len=S,
                               rope_base=10000.0, rotary_dim=4, norm="layernorm", norm_eps=1e-5, activation="relu",
                               bias=True, attn_bias=False, final_norm=False, tie_embeddings=False, dropout=0.1,
                               pad_token_id=0, padding_idx=0)
    # rotary_transformer_small_ilm.yaml sets neither rotary_emb_dim nor final_layer_without_normalization: the
    # rotary buffer and the absence of output_layer.norm_final tell; the vocabulary comes off the embedding
    hydra = {k: v for k, v in hub_config(num_embeddings="${tokenizer:full_vocab_size}", _target_=TARGET).items()
             if k not in ("rotary_emb_dim", "final_layer_without_normalization")}
    assert ilm_config_from_xlm_core({"model": hydra}, xlm_core_state()) == config
    with pytest.raises(ConversionError, match="no length_output_layer"):
        convert_ilm_xlm_core({k: v for k, v in xlm_core_state().items() if not k.startswith("length_")}, hub_config())
    with pytest.raises(ConversionError, match="14 classes.*LengthClassification"):
        convert_ilm_xlm_core(xlm_core_state(classes=S), hub_config())
    with pytest.raises(ConversionError, match="RotaryTransformerILMModel,|reads xlm-core's"):
        ilm_config_from_xlm_core(hub_config(_target_="ilm.model_ilm.RotaryTransformerILMModel"), xlm_core_state())


def test_round_trips_are_identity():
    ref = xlm_core_state()
    converted = convert_ilm_xlm_core(ref, hub_config())
    # xlm-core's parameters, no more: its attention has no biases, and neither has the converted model's
    assert not any(".attn." in k and k.endswith(".bias") for k in converted.state)
    assert load(converted).num_parameters() == sum(ref[k].numel() for k in parameter_keys(ref))
    back = convert_to_ilm_xlm_core(converted.state, converted.config)
    assert list(back.state) == hub_layout(ref) and all(torch.equal(back.state[k], ref[k]) for k in hub_layout(ref))
    assert back.config == {k: v for k, v in hub_config().items() if k != "mask_idx"}

    torch.manual_seed(0)
    model = create_ilm_model(IlmConfig(vocab_size=V, model_dim=D, num_layers=L, num_heads=H, ffn_dim=FF, max_seq_len=S,
                                       rotary_dim=6, activation="gelu_tanh", final_norm=True, attn_bias=False,
                                       padding_idx=0)).eval()
    there = assert_round_trip(randomize_for_xlm_core_(model), convert_to_ilm_xlm_core, convert_ilm_xlm_core)
    assert there.config["rotary_emb_dim"] == 6 and there.config["final_layer_without_normalization"] is False


def test_with_xlm_cores_settings_loss_and_gradients_are_xlm_cores():
    """ILMLossWithMaskedCE (binary_ce, a stopping class weight) on the batch its seq2seq collator builds, against
    ilm_loss with insertion_gaps="attended" and the same weight on ours, for the same drops and weights."""
    ref = xlm_core_state()
    for key in parameter_keys(ref):
        ref[key].requires_grad_()
    model = load(convert_ilm_xlm_core({k: v.detach() for k, v in ref.items()}, hub_config()))
    tok = WordTokenizer([str(i) for i in range(V - 7)])  # [PAD] 0, [CLS] 1, [BOS] 4: xlm-core's padding_idx is 0
    prompts, targets = [[10, 11, 12], [13], [14, 15]], [[20, 21, 22, 23], [24, 25], [26]]
    drops = [[0, 2, 3], [], [0]]  # three in two gaps; nothing (the stop target); the only token
    ours = IlmSeq2SeqCollator(tok, max_len=S)([{"prompt_ids": p, "target_ids": t} for p, t in zip(prompts, targets)],
                                              drops=drops)
    theirs = xlm_core_fixtures.ilm_seq2seq_batch(prompts, targets, drops, pad=tok.pad_token_id, cls=tok.cls_token_id,
                                                 bos=tok.bos_token_id, vocab=V, block_size=6)
    positions = (theirs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
    vocab, stop = xlm_core_forward(ref, theirs["input_ids"], theirs["attention_mask"], positions,
                                   cls_position=theirs["cls_position"], padding_idx=0)
    expected = xlm_core_fixtures.ilm_loss(vocab, stop, theirs, stopping_class_weight=0.3)
    loss = ilm_loss(model, ours, stopping_class_weight=0.3, insertion_gaps="attended")["loss"]
    assert torch.allclose(loss, expected, atol=1e-5)
    assert ilm_loss(model, ours, stopping_class_weight=0.3)["loss"] < expected - 0.1  # the default: target gaps only

    expected.backward()
    loss.backward()
    grads = XLM_CORE_KEY_MAP.inverse().apply({k: p.grad for k, p in model.named_parameters()}).state
    assert set(grads) == {k for k, v in ref.items() if v.requires_grad}
    for key, grad in grads.items():
        assert torch.allclose(grad, ref[key].grad, rtol=1e-4, atol=1e-6), key
    assert ref["embed_tokens.weight"].grad[tok.pad_token_id].eq(0).all()  # padding_idx: the [PAD] row keeps still


def test_lightning_checkpoint_with_ema_loads_strictly(tmp_path):
    omegaconf = pytest.importorskip("omegaconf")
    ref, averaged = xlm_core_state(seed=0), xlm_core_state(seed=1)
    hyper = omegaconf.OmegaConf.create({"model": hub_config(num_embeddings="${tokenizer:full_vocab_size}",
                                                            max_length="${predictor.max_length}", _target_=TARGET),
                                        "predictor": {"max_length": S}})
    ema = ema_entry(averaged, num_updates=11, collected_params=[ref[k] for k in parameter_keys(ref)])
    write_lightning_checkpoint(tmp_path / "last.ckpt", ref, hyper=hyper, compiled=True, rotary_tables=("cos",),
                               max_length=S, predictor_copy=True, global_step=11, ema=ema)
    assert_same(xlm.load_model(tmp_path / "last.ckpt", family="ilm"), averaged)  # the only ILM format: no name needed
    converted = get_family("ilm").converters["xlm_core"](tmp_path / "last.ckpt")
    assert converted.config.max_seq_len == S and any("EMA" in n for n in converted.notes)
    assert_same(load(convert_ilm_xlm_core(*reversed(read_xlm_core(tmp_path / "last.ckpt", use_ema=False)))), ref)


def test_a_card_with_the_xlm_core_format(tmp_path, monkeypatch):
    ref = xlm_core_state()
    write_hub_export(tmp_path / "cards" / "ilm_export", ref, hub_config())
    (tmp_path / "cards" / "mine.yaml").write_text(yaml.safe_dump(
        {"name": "my_xlm_core_ilm", "model_family": "ilm", "checkpoint": "ilm_export/model.safetensors",
         "checkpoint_format": "xlm_core"}))
    monkeypatch.setenv("XLM_USER_ASSET_DIR", str(tmp_path / "cards"))
    monkeypatch.delenv("XLM_ASSET_PATH", raising=False)
    assert_same(xlm.load_model("my_xlm_core_ilm"), ref)
    out = export(xlm.load_model("my_xlm_core_ilm"), tmp_path / "again", format="xlm_core")
    assert_same(load(XLM_CORE(out)), ref)


def _fake_hub():
    path = Path(__file__).parents[2] / "assets" / "hub_server.py"
    spec = importlib.util.spec_from_file_location("xlm_test_hub_server", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FakeHub


def test_the_shipped_ilm_owt_card_through_a_stand_in_hub(tmp_path, monkeypatch):
    ref = xlm_core_state()
    export_dir = write_hub_export(tmp_path / "export", ref, hub_config())
    monkeypatch.setenv("XLM_USER_ASSET_DIR", str(tmp_path / "no_cards"))
    monkeypatch.setenv("XLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("XLM_ASSET_PATH", raising=False)
    with _fake_hub()() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        for name in ("model.safetensors", "config.json"):
            hub.files[("dhruveshpatel/ilm-owt", "main", name)] = (export_dir / name).read_bytes()
        with pytest.warns(xlm.assets.download.UnverifiedDownloadWarning):
            assert_same(xlm.load_model("ilm-owt"), ref)


def test_misfits_are_reported_together():
    ref = dict(xlm_core_state())
    del ref["length_output_layer.mlp.2.bias"]
    ref["output_layer.norm_final.weight"] = torch.ones(D)  # the config says no final norm
    ref["encoder.1.mlp.0.weight"] = torch.zeros(FF + 1, D)
    with pytest.raises(ConversionError) as err:
        convert_ilm_xlm_core(ref, hub_config(), source="ilm-owt/model.safetensors")
    assert err.value.missing == ["stop_head.down_proj.bias"]
    assert err.value.unexpected == ["final_norm.weight"]
    assert err.value.wrong_shapes == [("layers.1.ffn.up_proj.weight", (FF + 1, D), (FF, D))]
