"""xlm.export: our format and HF transformers (ARLM as GPT-2 or Llama, MLM as BERT), checked by logits and
by the loss of a briefly trained model surviving save / convert / load unchanged."""

import json

import pytest
import torch
import torch.nn.functional as F

from xlm.interop.export import ExportError, export
from xlm.models.arlm import ArlmConfig, create_arlm_model
from xlm.models.arlm.loss import arlm_loss
from xlm.models.mlm import MlmConfig, create_mlm_model
from xlm.models.mlm.loss import mlm_loss
from xlm.registry import get_family
from xlm.run_dir import load_run_model

transformers = pytest.importorskip("transformers")

ARLM_LAYOUTS = {
    "gpt2": dict(pos_encoding="learned", norm="layernorm", activation="gelu_tanh", bias=True),
    "llama": dict(pos_encoding="rope", norm="rmsnorm", activation="swiglu", bias=False, num_kv_heads=2,
                  rope_base=5000.0),
}


def arlm(layout, tie=True, **overrides):
    config = ArlmConfig(vocab_size=48, model_dim=32, num_layers=2, num_heads=4, ffn_dim=56, max_seq_len=32,
                        tie_embeddings=tie, **(ARLM_LAYOUTS[layout] | overrides))
    torch.manual_seed(0)
    return create_arlm_model(config)


def bert_like(tie=True):
    config = MlmConfig(vocab_size=48, model_dim=32, num_layers=2, num_heads=4, ffn_dim=56, max_seq_len=32,
                       norm_position="post", pos_encoding="learned", type_vocab_size=2, norm_eps=1e-12,
                       activation="gelu", head_transform=True, head_bias=True, tie_embeddings=tie)
    torch.manual_seed(0)
    return create_mlm_model(config)


def arlm_batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 48, (4, 24), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[2, 18:] = False
    labels = torch.full_like(ids, -100)
    labels[:, :-1] = torch.where(mask[:, 1:], ids[:, 1:], -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def mlm_batch():
    g = torch.Generator().manual_seed(2)
    target = torch.randint(2, 48, (4, 24), generator=g)
    masked = torch.rand(4, 24, generator=g) < 0.3
    masked[:, 0] = True
    return {"input_ids": torch.where(masked, 1, target), "attention_mask": torch.ones_like(target, dtype=torch.bool),
            "target_ids": target, "maskable": torch.ones_like(masked), "masked": masked, "t": torch.full((4,), 0.3)}


def train_(model, loss_fn, batch, steps=15):
    """A few Adam steps: biases, norms and heads leave their init, as in a trained model."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model, batch)["loss"].backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("layout", ARLM_LAYOUTS)
@pytest.mark.parametrize("tie", [True, False])
def test_hf_export_loads_in_transformers_with_the_same_logits(layout, tie, tmp_path):
    model = train_(arlm(layout, tie), arlm_loss, arlm_batch(), steps=3)
    export(model, tmp_path, format="hf")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == layout and config["tie_word_embeddings"] == tie
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[layout]
    ids = torch.randint(0, 48, (2, 20))
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, model(ids), atol=1e-5)


def test_bert_export_loads_in_transformers_with_the_same_logits(tmp_path):
    model = train_(bert_like(), mlm_loss, mlm_batch(), steps=3)
    export(model, tmp_path, format="hf")
    hf = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "BertForMaskedLM"
    ids = torch.randint(0, 48, (2, 20))
    types = torch.randint(0, 2, (2, 20))
    with torch.no_grad():
        assert torch.allclose(hf(input_ids=ids, token_type_ids=types).logits, model(ids, token_type_ids=types),
                              atol=1e-5)


@pytest.mark.parametrize("layout", ARLM_LAYOUTS)
def test_trained_arlm_loss_survives_save_convert_load(layout, tmp_path):
    batch = arlm_batch()
    model = train_(arlm(layout, tie=False), arlm_loss, batch)
    with torch.no_grad():
        loss = arlm_loss(model, batch)["loss"]

        export(model, tmp_path / "xlm")
        assert torch.equal(arlm_loss(load_run_model(tmp_path / "xlm"), batch)["loss"], loss)

        export(model, tmp_path / "hf", format="hf")
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
        mask = batch["attention_mask"]
        logits = hf(batch["input_ids"], attention_mask=mask.long(),
                    position_ids=(mask.long().cumsum(-1) - 1).clamp(min=0)).logits
        selected = batch["labels"] != -100
        hf_loss = F.cross_entropy(logits[selected], batch["labels"][selected])
        assert torch.allclose(hf_loss, loss, atol=1e-5)

        config, state = get_family("arlm").converters[f"hf_{layout}"](tmp_path / "hf")
        assert config == model.config
        back = create_arlm_model(config).eval()
        back.load_state_dict(state, strict=True)
        assert torch.equal(arlm_loss(back, batch)["loss"], loss)


def test_trained_mlm_loss_survives_save_convert_load(tmp_path):
    batch = mlm_batch()
    model = train_(bert_like(), mlm_loss, batch)
    with torch.no_grad():
        loss = mlm_loss(model, batch)["loss"]
        export(model, tmp_path / "xlm")
        assert torch.equal(mlm_loss(load_run_model(tmp_path / "xlm"), batch)["loss"], loss)
        export(model, tmp_path / "hf", format="hf")
        config, state = get_family("mlm").converters["hf_bert"](tmp_path / "hf")
        back = create_mlm_model(config).eval()
        back.load_state_dict(state, strict=True)
        assert torch.equal(mlm_loss(back, batch)["loss"], loss)
        hf = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
        logits = hf(input_ids=batch["input_ids"]).logits[batch["masked"]]
        assert torch.allclose(F.cross_entropy(logits, batch["target_ids"][batch["masked"]]), loss, atol=1e-5)


def test_xlm_export_is_a_run_dir(tmp_path):
    from xlm.data.tokenizers import WordTokenizer
    from xlm.run_dir import load_run_tokenizer, read_run_config

    model = arlm("llama").eval()
    tokenizer = WordTokenizer(["a", "b", "c"])
    export(model, tmp_path, tokenizer=tokenizer)
    config = read_run_config(tmp_path)
    assert config["family"] == "arlm" and config["model_config"]["rope_base"] == 5000.0
    assert load_run_tokenizer(tmp_path) == tokenizer
    ids = torch.randint(0, 48, (2, 9))
    with torch.no_grad():
        assert torch.equal(load_run_model(tmp_path)(ids), model(ids))
    export(create_arlm_model(get_family("arlm").archs.get("arlm_tiny")), tmp_path / "tiny")
    assert read_run_config(tmp_path / "tiny")["arch"] == "arlm_tiny"
    assert read_run_config(tmp_path / "tiny")["tokenizer"] is None


def test_no_hf_layout_says_what_differs(tmp_path):
    model = arlm("gpt2", pos_encoding="rope")  # rope + layernorm + gelu: neither GPT-2 nor Llama
    with pytest.raises(ExportError) as err:
        export(model, tmp_path, format="hf")
    message = str(err.value)
    assert "hf_gpt2: pos_encoding='rope'" in message
    assert "hf_llama: norm='layernorm'" in message and "activation='gelu_tanh'" in message
    assert not (tmp_path / "config.json").exists()
    star = create_mlm_model(get_family("mlm").archs.get("mlm_star"))
    with pytest.raises(ExportError, match="hf_bert: norm_position='pre'"):
        export(star, tmp_path, format="hf")
    with pytest.raises(ExportError, match="unknown export format 'onnx'"):
        export(star, tmp_path, format="onnx")


def test_a_named_layout_and_an_hf_tokenizer(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from xlm.data.hf_tokenizer import HFTokenizer

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    ours = HFTokenizer(tok.to_str())
    model = arlm("llama")
    export(model, tmp_path, format="hf_llama", tokenizer=ours)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf_tok("hello world", add_special_tokens=False)["input_ids"] == ours.encode("hello world")
    assert hf_tok.mask_token == "[MASK]" and hf_tok.pad_token == "[PAD]"
    with pytest.raises(ExportError, match="tokenizer.json"):
        from xlm.data.tokenizers import WordTokenizer

        export(model, tmp_path / "x", format="hf", tokenizer=WordTokenizer(["a"]))


@pytest.mark.parametrize("format", ["xlm", "hf"])
def test_a_directory_holding_files_is_refused_unless_overwrite(format, tmp_path):
    out = tmp_path / "proj"
    out.mkdir()
    (out / "config.json").write_text('{"mine": 1}')
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match=r"proj already holds config.json, notes.txt; .*overwrite=True"):
        export(arlm("gpt2"), out, format=format)
    assert (out / "config.json").read_text() == '{"mine": 1}' and sorted(p.name for p in out.iterdir()) == [
        "config.json", "notes.txt"]  # nothing written, nothing left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proj"]
    export(arlm("gpt2"), out, format=format, overwrite=True)
    assert '"mine"' not in (out / "config.json").read_text() and (out / "notes.txt").read_text() == "keep me"
    with pytest.raises(ExportError, match="notes.txt is a file"):
        export(arlm("gpt2"), out / "notes.txt", format=format)


def test_an_empty_or_new_directory_needs_no_overwrite(tmp_path):
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "new" / "deeper"):
        export(arlm("gpt2"), out, format="hf")
        assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["deeper"]  # no staging dir left
