"""The convert recipe: HF dir -> xlm -> HF round trip with the same logits, and what it reports."""

import pytest
import torch

import xlm
from xlm.recipes import convert


def test_hf_to_xlm_to_hf(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(transformers.BertConfig(
        vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32)).eval()
    hf.save_pretrained(tmp_path / "bert")
    (tmp_path / "bert" / "config.json").write_text(
        (tmp_path / "bert" / "config.json").read_text().replace('"BertForPreTraining"', '"BertForMaskedLM"'))
    assert convert.main(["--from", str(tmp_path / "bert"), "--to", "xlm", "--out", str(tmp_path / "ours")]) == 0
    out = capsys.readouterr().out
    assert "as mlm/hf_bert" in out and "dropped" in out and "pooler" in out  # the NSP parts are reported
    assert convert.main(["--from", str(tmp_path / "ours"), "--to", "hf", "--out", str(tmp_path / "back")]) == 0
    back = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "back").eval()
    ids = torch.randint(0, 40, (2, 10))
    with torch.no_grad():
        expected = hf(ids).prediction_logits
        assert torch.allclose(xlm.load_model(tmp_path / "ours")(ids), expected, atol=1e-5)
        assert torch.allclose(back(ids).logits, expected, atol=1e-5)
    assert convert.main(["--from", str(tmp_path / "bert" / "model.safetensors"), "--out", str(tmp_path / "x")]) == 2
    assert "pass family=" in (err := capsys.readouterr().err) and "(xlm convert: --family, --format)" in err


def test_a_layout_its_family_recognises_needs_no_format(tmp_path, capsys):
    from xlm.models.mdlm import MdlmConfig, create_mdlm_model

    torch.manual_seed(0)
    model = create_mdlm_model(MdlmConfig(vocab_size=40, model_dim=32, num_layers=1, num_heads=4, max_seq_len=16,
                                         cond_dim=24)).eval()
    xlm.export(model, tmp_path / "ref", format="mdlm_reference")
    assert convert.main(["--from", str(tmp_path / "ref"), "--out", str(tmp_path / "ours")]) == 0
    assert "as mdlm/mdlm_reference" in capsys.readouterr().out
    ours, expected = xlm.load_model(tmp_path / "ours").state_dict(), model.state_dict()
    assert ours.keys() == expected.keys() and all(torch.equal(ours[k], expected[k]) for k in expected)


def test_out_holding_files_is_refused_before_the_source_is_read(tmp_path, capsys):
    """A typo'd --from is not even looked at: the target is checked first, and nothing in it changes."""
    out = tmp_path / "project"
    out.mkdir()
    (out / "config.json").write_text("{}")
    assert convert.main(["--from", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "project already holds config.json" in err and "--overwrite" in err
    assert (out / "config.json").read_text() == "{}"


def test_overwrite_replaces_the_written_files_and_names_the_kept_ones(tmp_path, capsys):
    from xlm.models.arlm import ArlmConfig, create_arlm_model

    torch.manual_seed(0)
    xlm.export(create_arlm_model(ArlmConfig(vocab_size=40, model_dim=32, num_layers=1, num_heads=4, max_seq_len=16)),
               tmp_path / "ours")
    (tmp_path / "ours" / "notes.txt").write_text("mine")
    before = xlm.load_model(tmp_path / "ours").state_dict()
    assert convert.main(["--from", str(tmp_path / "ours"), "--out", str(tmp_path / "ours"), "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "kept in" in out and out.strip().endswith("not written by this export: notes.txt")
    after = xlm.load_model(tmp_path / "ours").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and (tmp_path / "ours" / "notes.txt").is_file()
