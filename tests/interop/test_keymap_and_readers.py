"""The shared converter machinery: key maps and their inverse, transforms, errors, safe readers."""

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from xlm.errors import CheckpointReadError, ConversionError
from xlm.interop.keymap import Chain, check_state_dict, KeyMap, Rule, Split, Transpose
from xlm.interop.readers import read_checkpoint, read_hf_dir, read_state_dict, to_plain

FUSED = KeyMap([
    Rule("h.{i}.ln.{p}", "layers.{i}.norm.{p}"),
    Rule("h.{i}.qkv.{p:weight}", ("layers.{i}.q.{p}", "layers.{i}.k.{p}", "layers.{i}.v.{p}"),
         Chain(Transpose(), Split(dim=0))),
    Rule("h.{i}.qkv.{p:bias}", ("layers.{i}.q.{p}", "layers.{i}.k.{p}", "layers.{i}.v.{p}"), Split(dim=0)),
    Rule("wte", "embed"),
    Rule("head", "embed"),  # tied: two names for one tensor
], drop=["h.{i}.mask"])


def fused_state():
    torch.manual_seed(0)
    table = torch.randn(5, 4)
    return {"wte": table, "head": table.clone(), "h.0.ln.weight": torch.randn(4), "h.0.ln.bias": torch.randn(4),
            "h.0.qkv.weight": torch.randn(4, 12), "h.0.qkv.bias": torch.randn(12), "h.0.mask": torch.ones(3, 3)}


def test_apply_splits_transposes_and_reports_drops():
    state = fused_state()
    result = FUSED.apply(state)
    assert result.dropped == ["h.0.mask"] and result.unmatched == []
    assert torch.equal(result.state["layers.0.q.weight"], state["h.0.qkv.weight"][:, :4].t())
    assert torch.equal(result.state["layers.0.v.bias"], state["h.0.qkv.bias"][8:])
    assert set(result.state) == {"embed", "layers.0.norm.weight", "layers.0.norm.bias", *(
        f"layers.0.{p}.{k}" for p in "qkv" for k in ("weight", "bias"))}


def test_inverse_is_derived_from_the_same_table():
    state = fused_state()
    back = FUSED.inverse().apply(FUSED.apply(state).state).state
    assert set(back) == set(state) - {"h.0.mask"}
    assert all(torch.equal(back[k], state[k]) for k in back)  # 'head' is re-created from the tied 'embed'


def test_tied_sources_must_agree_and_unmatched_keys_are_listed():
    state = fused_state()
    state["head"] = state["head"] + 1
    with pytest.raises(ConversionError, match="wte and head both map to embed"):
        FUSED.apply(state, source="x.bin")
    result = FUSED.apply({**fused_state(), "h.0.extra": torch.zeros(1)})
    assert result.unmatched == ["h.0.extra"]
    partial = fused_state()
    result = FUSED.inverse().apply({k: v for k, v in FUSED.apply(partial).state.items() if k != "layers.0.k.bias"})
    assert sorted(result.incomplete) == ["layers.0.q.bias", "layers.0.v.bias"]  # no k: no fused bias


def test_rules_reject_placeholder_mismatch_and_missing_transforms():
    with pytest.raises(ValueError, match="same placeholders"):
        Rule("a.{i}.w", "b.w")
    with pytest.raises(ValueError, match="needs a transform"):
        Rule("a.w", ("b.w", "c.w"))


def test_conversion_error_lists_everything_at_once():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    state = {"0.weight": torch.zeros(4, 3), "0.bias": torch.zeros(5), "2.weight": torch.zeros(1)}
    with pytest.raises(ConversionError) as err:
        check_state_dict(state, model, source="ckpt.safetensors")
    assert err.value.missing == ["1.bias", "1.weight"]
    assert err.value.unexpected == ["2.weight"]
    assert err.value.wrong_shapes == [("0.bias", (5,), (4,))]
    text = str(err.value)
    assert text.startswith("ckpt.safetensors: ")
    assert "2 missing key(s)" in text and "1 unexpected key(s)" in text and "1 wrong shape(s)" in text
    assert isinstance(err.value, ValueError)


def test_read_safetensors_pickle_and_index(tmp_path):
    state = {"a": torch.arange(3.0), "b": torch.ones(2, 2)}
    save_file(state, tmp_path / "w.safetensors")
    torch.save(state, tmp_path / "w.bin")
    torch.save({"state_dict": state, "epoch": 2}, tmp_path / "w.ckpt")
    for name in ("w.safetensors", "w.bin", "w.ckpt"):
        got = read_state_dict(tmp_path / name)
        assert set(got) == {"a", "b"} and torch.equal(got["b"], state["b"])
    save_file({"a": state["a"]}, tmp_path / "s1.safetensors")
    save_file({"b": state["b"]}, tmp_path / "s2.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}')
    (tmp_path / "config.json").write_text('{"model_type": "x"}')
    config, got = read_hf_dir(tmp_path / "model.safetensors.index.json")
    assert config == {"model_type": "x"} and set(got) == {"a", "b"}


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_pickled_code_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"state_dict": {"w": torch.zeros(1)}, "evil": Payload()}, tmp_path / "evil.ckpt")
    try:
        state = read_state_dict(tmp_path / "evil.ckpt")
    except CheckpointReadError:
        pass
    else:
        assert set(state) == {"w"}
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()
    with open(tmp_path / "evil.pkl", "wb") as fh:
        pickle.dump(Payload(), fh, protocol=2)
    with pytest.raises(CheckpointReadError, match="evil.pkl") as info:
        read_state_dict(tmp_path / "evil.pkl")
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()
    assert "weights_only` set to `False`" not in str(info.value)  # never torch's advice to trust the file


def test_unreadable_files_name_their_apparent_format(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointReadError, match=r"junk.bin could not be read.*unknown format"):
        read_checkpoint(tmp_path / "junk.bin")
    state = {"a": torch.zeros(100)}
    save_file(state, tmp_path / "cut.safetensors")
    data = (tmp_path / "cut.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointReadError, match="cut.safetensors.*truncated"):
        read_checkpoint(tmp_path / "cut.safetensors")
    torch.save(state, tmp_path / "cut.pt")
    data = (tmp_path / "cut.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointReadError, match="cut.pt.*torch.save zip archive|cut.pt.*unknown format"):
        read_checkpoint(tmp_path / "cut.pt")


def test_omegaconf_configs_in_lightning_checkpoints_become_plain(tmp_path):
    omegaconf = pytest.importorskip("omegaconf")
    config = omegaconf.OmegaConf.create({"model": {"hidden_size": 8, "sizes": [1, 2], "eps": 1e-3, "name": "x",
                                                   "ref": "${model.hidden_size}", "none": None}})
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {"config": config}}, tmp_path / "c.ckpt")
    loaded = read_checkpoint(tmp_path / "c.ckpt")
    assert to_plain(loaded["hyper_parameters"]) == {"config": {"model": {
        "hidden_size": 8, "sizes": [1, 2], "eps": 1e-3, "name": "x", "ref": "${model.hidden_size}", "none": None}}}
    assert to_plain(loaded["hyper_parameters"]["config"], resolve=True)["model"]["ref"] == 8
