"""MLM <-> HF BERT: same logits, bitwise round trip, pre-training heads dropped with a report."""

import pytest
import torch

from xlm.errors import ConversionError
from xlm.models.mlm import create_mlm_model
from xlm.models.mlm.interop import HF_BERT, convert_hf_bert, convert_to_hf_bert, mlm_config_from_hf_bert
from xlm.registry import get_family

transformers = pytest.importorskip("transformers")


def randomize_(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.1)


def bert_config(**overrides):
    fields = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                  max_position_embeddings=40, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0)
    return transformers.BertConfig(**(fields | overrides))


def bert(cls=None, **overrides):
    torch.manual_seed(0)
    model = (cls or transformers.BertForMaskedLM)(bert_config(**overrides)).eval()
    randomize_(model)
    return model


def ours_from(state, config):
    converted = convert_hf_bert(state, config)
    model = create_mlm_model(converted.config).eval()
    model.load_state_dict(converted.state, strict=True)
    return model, converted


@pytest.mark.parametrize("act", ["gelu", "gelu_new"])
def test_logits_match_hf_bert(act):
    hf = bert(hidden_act=act)
    model, converted = ours_from(hf.state_dict(), hf.config)
    assert converted.dropped == []
    assert model.head.proj.weight is model.embed_tokens.weight
    ids = torch.randint(0, 64, (2, 19))
    types = torch.randint(0, 2, (2, 19))
    mask = torch.ones(2, 19, dtype=torch.bool)
    mask[1, 12:] = False
    with torch.no_grad():
        assert torch.allclose(model(ids, token_type_ids=types), hf(input_ids=ids, token_type_ids=types).logits,
                              atol=1e-5)
        expected = hf(input_ids=ids, token_type_ids=types, attention_mask=mask.long()).logits
        assert torch.allclose(model(ids, attention_mask=mask, token_type_ids=types)[mask], expected[mask], atol=1e-5)


@pytest.mark.parametrize("tie", [True, False])
def test_round_trip_hf_xlm_hf_is_bitwise(tie):
    hf = bert(tie_word_embeddings=tie)
    if not tie:  # untied, transformers 5 keeps cls.predictions.bias apart (and unused); a file has them equal
        with torch.no_grad():
            hf.cls.predictions.bias.copy_(hf.cls.predictions.decoder.bias)
    original = hf.state_dict()
    converted = convert_hf_bert(original, hf.config)
    back = convert_to_hf_bert(converted.state, converted.config)
    assert set(back.state) == set(original)  # both cls.predictions.bias and decoder.bias
    for key, tensor in original.items():
        assert torch.equal(back.state[key], tensor), key


def test_untied_head_keeps_the_decoder_bias_forward_uses():
    hf = bert(tie_word_embeddings=False)
    model, converted = ours_from(hf.state_dict(), hf.config)
    assert converted.dropped == ["cls.predictions.bias"] and "decoder" in converted.summary()
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        assert torch.allclose(model(ids), hf(input_ids=ids).logits, atol=1e-5)


def test_pretraining_checkpoint_drops_pooler_and_nsp_with_a_report():
    hf = bert(transformers.BertForPreTraining)
    model, converted = ours_from(hf.state_dict(), hf.config)
    assert sorted(converted.dropped) == ["bert.pooler.dense.bias", "bert.pooler.dense.weight",
                                         "cls.seq_relationship.bias", "cls.seq_relationship.weight"]
    assert "dropped 4 key(s): bert.pooler.dense.weight" in converted.summary()
    ids = torch.randint(0, 64, (2, 13))
    with torch.no_grad():
        assert torch.allclose(model(ids), hf(input_ids=ids).prediction_logits, atol=1e-5)


def test_old_gamma_beta_names_and_omitted_tied_decoder():
    """bert-base-uncased's own file spells LayerNorm weights gamma/beta and leaves out the tied decoder."""
    hf = bert()
    state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in hf.state_dict().items() if k not in ("cls.predictions.decoder.weight",
                                                              "cls.predictions.decoder.bias")}
    model, converted = ours_from(state, hf.config.to_dict())
    assert any("gamma/beta" in note for note in converted.notes)
    ids = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        assert torch.allclose(model(ids), hf(input_ids=ids).logits, atol=1e-5)


def test_converter_reads_an_hf_model_dir(tmp_path):
    hf = bert()
    hf.save_pretrained(tmp_path)
    config, state = get_family("mlm").converters["hf_bert"](tmp_path)
    model = create_mlm_model(config).eval()
    model.load_state_dict(state, strict=True)
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        assert torch.allclose(model(ids), hf(input_ids=ids).logits, atol=1e-5)


def test_tied_decoder_bias_copies_must_agree():
    hf = bert()
    state = dict(hf.state_dict())
    state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"] + 1
    with pytest.raises(ConversionError, match="both map to head.proj.bias"):
        convert_hf_bert(state, hf.config)


def test_misfits_are_reported_together(tmp_path):
    hf = bert()
    state = dict(hf.state_dict())
    del state["bert.encoder.layer.1.output.dense.bias"]
    state["bert.encoder.layer.0.attention.self.distance_embedding.weight"] = torch.zeros(3, 3)
    state["bert.embeddings.position_embeddings.weight"] = torch.zeros(41, 32)
    with pytest.raises(ConversionError) as err:
        convert_hf_bert(state, hf.config, source="bert/model.safetensors")
    assert err.value.missing == ["layers.1.ffn.down_proj.bias"]
    assert err.value.unexpected == ["bert.encoder.layer.0.attention.self.distance_embedding.weight"]
    assert err.value.wrong_shapes == [("embed_positions.weight", (41, 32), (40, 32))]
    assert str(err.value).startswith("bert/model.safetensors: ")


@pytest.mark.parametrize("overrides, message", [
    ({"position_embedding_type": "relative_key"}, "absolute positions only"),
    ({"hidden_act": "relu"}, "hidden_act 'relu'"),
    ({"is_decoder": True}, "decoder"),
])
def test_unsupported_bert_features_are_named(overrides, message):
    with pytest.raises(ConversionError, match=message):
        mlm_config_from_hf_bert(bert_config().to_dict() | overrides)


def test_missing_size_is_an_error():
    config = bert_config().to_dict()
    del config["intermediate_size"]
    with pytest.raises(ConversionError, match="'intermediate_size'"):
        mlm_config_from_hf_bert(config)


def test_wrong_model_type(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "roberta"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConversionError, match="model_type 'roberta', not 'bert'"):
        HF_BERT(tmp_path)
