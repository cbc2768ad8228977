"""Format detection asks every registered family's converters: HF model types, checkpoint signatures,
explicit names, the errors when nothing or more than one converter recognises a checkpoint, and a
format that a family registered here adds."""

import json
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

import xlm
from xlm.assets.loading import resolve_source
from xlm.interop.converter import Converted, Converter, config_dict
from xlm.interop.detect import FormatDetectionError, detect_format
from xlm.interop.export import export
from xlm.models.arlm import ArlmConfig, create_arlm_model
from xlm.models.mdlm import MdlmConfig, create_mdlm_model
from xlm.models.mlm import MlmConfig, create_mlm_model
from xlm.registry import ArchRegistry, Family, families, register_family

V = 40


def _randomised(model: nn.Module) -> nn.Module:
    """Every parameter drawn afresh, so zero-initialised ones (adaLN, biases) take part in the comparison."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def _models() -> dict[str, tuple[nn.Module, str, tuple[str, str]]]:
    """model, export format, what detection should say, for each model_type the core families declare."""
    small = dict(vocab_size=V, model_dim=32, num_layers=2, num_heads=4, ffn_dim=64, max_seq_len=16)
    return {
        "gpt2": (create_arlm_model(ArlmConfig(**small, pos_encoding="learned", norm="layernorm",
                                              activation="gelu_tanh", bias=True)), "hf_gpt2", ("arlm", "hf_gpt2")),
        "llama": (create_arlm_model(ArlmConfig(**small, pos_encoding="rope", norm="rmsnorm", activation="swiglu",
                                               bias=False, num_kv_heads=2)), "hf_llama", ("arlm", "hf_llama")),
        "bert": (create_mlm_model(MlmConfig(**small, norm_position="post", pos_encoding="learned", type_vocab_size=2,
                                            activation="gelu", head_transform=True, head_bias=True)),
                 "hf_bert", ("mlm", "hf_bert")),
        "mdlm": (create_mdlm_model(MdlmConfig(vocab_size=V, model_dim=32, num_layers=2, num_heads=4, max_seq_len=16,
                                              cond_dim=24)), "mdlm_reference", ("mdlm", "mdlm_reference")),
    }


def _forward(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(ids, 0.0) if isinstance(model.config, MdlmConfig) else model(ids)


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "bert", "mdlm"])
def test_an_exported_model_dir_loads_back_by_its_model_type_alone(model_type, tmp_path):
    model, fmt, expected = _models()[model_type]
    model = _randomised(model)
    out = export(model, tmp_path / model_type, format=fmt)
    assert json.loads((out / "config.json").read_text())["model_type"] == model_type
    assert detect_format(out) == expected
    (tmp_path / "config_only").mkdir()  # the model_type alone says it: no weights to look at
    (tmp_path / "config_only" / "config.json").write_text(json.dumps({"model_type": model_type}))
    assert detect_format(tmp_path / "config_only") == expected
    ids = torch.randint(0, V, (2, 10))
    with torch.no_grad():
        assert torch.allclose(_forward(xlm.load_model(out), ids), _forward(model, ids), atol=1e-5)


def _lightning(path, names: list[str], model: dict[str, Any] | None = None):
    """A Lightning checkpoint with these tensor names (detection reads no values) and the model's hyper-parameters."""
    torch.save({"state_dict": {k: torch.zeros(1) for k in names},
                "hyper_parameters": {"model": model} if model is not None else {}}, path)
    return path


XLM_CORE_KEYS = ["model.embed_tokens.weight", "model.encoder.0.attn_qkv.weight", "model.encoder.0.o_proj.weight",
                 "model.output_layer.linear.weight", "noise_schedule.sigma_min"]
TARGETS = {"arlm": "arlm.model_arlm.RotaryTransformerARLMModel", "mlm": "mlm.model_mlm.RotaryTransformerMLMModel"}


def test_checkpoint_files_are_recognised_by_their_signatures(tmp_path):
    reference = ["backbone.vocab_embed.embedding", "backbone.blocks.0.attn_qkv.weight"]
    assert detect_format(_lightning(tmp_path / "ref.ckpt", reference)) == ("mdlm", "mdlm_reference")
    save_file({"vocab_embed.embedding": torch.zeros(2)}, tmp_path / "bare_dit.safetensors")
    assert detect_format(tmp_path / "bare_dit.safetensors") == ("mdlm", "mdlm_reference")

    ilm = XLM_CORE_KEYS + ["model.length_output_layer.linear.weight"]
    assert detect_format(_lightning(tmp_path / "ilm.ckpt", ilm)) == ("ilm", "xlm_core")
    mdlm = [k.replace("model.", "model._orig_mod.") for k in XLM_CORE_KEYS] + ["model.sigma_map.mlp.0.weight"]
    assert detect_format(_lightning(tmp_path / "mdlm.ckpt", mdlm)) == ("mdlm", "xlm_core")
    for family, target in TARGETS.items():
        named = _lightning(tmp_path / f"{family}.ckpt", XLM_CORE_KEYS, {"d_model": 8, "_target_": target})
        assert detect_format(named) == (family, "xlm_core")

    unnamed = _lightning(tmp_path / "plain.ckpt", XLM_CORE_KEYS, {"d_model": 8})
    with pytest.raises(FormatDetectionError, match=r"recognised by 2 converters \(arlm/xlm_core, mlm/xlm_core\)"):
        detect_format(unnamed)
    assert detect_format(unnamed, family="mlm") == ("mlm", "xlm_core")
    with pytest.raises(FormatDetectionError, match="does not tell which.*arlm/xlm_core, mlm/xlm_core.*pass family="):
        detect_format(unnamed, fmt="xlm_core")
    assert detect_format(tmp_path / "ilm.ckpt", fmt="xlm_core") == ("ilm", "xlm_core")  # the only one it shows
    assert detect_format(tmp_path / "bare_dit.safetensors", fmt="mdlm_reference") == ("mdlm", "mdlm_reference")


def test_what_is_recognised_by_nothing_or_by_another_family_says_what_to_pass(tmp_path):
    (tmp_path / "roberta").mkdir()
    (tmp_path / "roberta" / "config.json").write_text('{"model_type": "roberta"}')
    with pytest.raises(FormatDetectionError) as err:
        detect_format(tmp_path / "roberta")
    message = str(err.value)
    assert "\n" not in message and "model_type 'roberta' is none of the known ones" in message
    for known in ("gpt2 -> arlm/hf_gpt2", "llama -> arlm/hf_llama", "bert -> mlm/hf_bert",
                  "mdlm -> mdlm/mdlm_reference", "signatures of arlm/xlm_core, ilm/xlm_core, mdlm/mdlm_reference",
                  "pass family= (one of arlm, ilm, mdlm, mlm)", "checkpoint_format="):
        assert known in message

    save_file({"h.0.attn.c_attn.weight": torch.zeros(2)}, tmp_path / "weights.safetensors")
    with pytest.raises(FormatDetectionError, match="no converter recognises it.*pass family="):
        detect_format(tmp_path / "weights.safetensors")
    with pytest.raises(FormatDetectionError, match=r"pass checkpoint_format= \(family 'arlm' reads hf_gpt2, hf_llama"):
        detect_format(tmp_path / "weights.safetensors", family="arlm")
    with pytest.raises(FormatDetectionError, match="unknown checkpoint format 'hf_gtp2'; did you mean 'hf_gpt2'"):
        detect_format(tmp_path / "weights.safetensors", fmt="hf_gtp2")
    with pytest.raises(FormatDetectionError, match="family 'arlm': unknown checkpoint format 'hf_bert'"):
        detect_format(tmp_path / "weights.safetensors", family="arlm", fmt="hf_bert")

    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(FormatDetectionError, match=r"looks like arlm/hf_gpt2, not a layout of family 'mlm' "
                                                   r"\(family 'mlm' reads hf_bert, xlm_core\); check family="):
        detect_format(tmp_path / "gpt2", family="mlm")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        detect_format(tmp_path / "nowhere")


# -- a family registered here, with a layout of its own ----------------------------------------------


@dataclass(kw_only=True)
class ToyConfig:
    vocab_size: int
    dim: int


@dataclass(kw_only=True)
class ToySampler:
    max_new_tokens: int = 4


class ToyModel(nn.Module):
    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids)


def _toy_to_xlm(state, source_config, *, source=None) -> Converted:
    c = config_dict(source_config)
    return Converted(ToyConfig(vocab_size=c["vocab_size"], dim=c["dim"]), {"embed.weight": state["emb.weight"]},
                     source=source)


def _register(monkeypatch, name: str, converter: Converter) -> None:
    """Registers a family for this test only: the registry goes back to what it was afterwards."""
    monkeypatch.setattr(families, "_families", dict(families._families))
    register_family(Family(name=name, config_class=ToyConfig, archs=ArchRegistry(name),
                           factory=lambda config, device=None, dtype=None: ToyModel(config),
                           unit_factory=lambda *args: None, sampler_config_class=ToySampler,
                           converters={converter.name: converter}, source=f"test:{name}"))


def _toy_dir(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "toy_lm", "vocab_size": 7, "dim": 3}))
    weights = torch.randn(7, 3)
    save_file({"emb.weight": weights}, path / "model.safetensors")
    return weights


def test_a_registered_family_adds_a_format_that_load_model_finds(tmp_path, monkeypatch):
    toy = Converter(name="toy_hf", description="a toy HF-style layout", to_xlm=_toy_to_xlm,
                    hf_model_types=("toy_lm",), needs_config=True)
    weights = _toy_dir(tmp_path / "cards" / "toy")
    with pytest.raises(FormatDetectionError, match="model_type 'toy_lm' is none of the known ones"):
        xlm.load_model(tmp_path / "cards" / "toy")
    _register(monkeypatch, "toy_lm", toy)
    model = xlm.load_model(tmp_path / "cards" / "toy")
    assert isinstance(model, ToyModel) and torch.equal(model.embed.weight, weights)
    (tmp_path / "roberta").mkdir()
    (tmp_path / "roberta" / "config.json").write_text('{"model_type": "roberta"}')
    with pytest.raises(FormatDetectionError, match="toy_lm -> toy_lm/toy_hf"):  # listed among the known ones
        detect_format(tmp_path / "roberta")

    # a card of that format names its weights file; needs_config brings the config.json beside it along
    (tmp_path / "cards" / "toy.yaml").write_text(yaml.safe_dump(
        {"name": "my_toy", "model_family": "toy_lm", "checkpoint": "toy/model.safetensors",
         "checkpoint_format": "toy_hf"}))
    monkeypatch.setenv("XLM_USER_ASSET_DIR", str(tmp_path / "cards"))
    monkeypatch.delenv("XLM_ASSET_PATH", raising=False)
    source = resolve_source("my_toy")
    assert (source.path, source.family, source.fmt, source.is_run_dir) == (tmp_path / "cards" / "toy", "toy_lm",
                                                                           "toy_hf", False)
    assert source.card is not None and source.card.name == "my_toy"
    assert torch.equal(xlm.load_model("my_toy").embed.weight, weights)


def test_two_families_claiming_one_model_type_is_an_error_naming_both(tmp_path, monkeypatch):
    impostor = Converter(name="gpt2_like", description="claims GPT-2 dirs too", to_xlm=_toy_to_xlm,
                         hf_model_types=("gpt2",))
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text('{"model_type": "gpt2"}')
    assert detect_format(tmp_path / "gpt2") == ("arlm", "hf_gpt2")
    _register(monkeypatch, "toy_gpt", impostor)
    with pytest.raises(FormatDetectionError, match=r"recognised by 2 converters \(arlm/hf_gpt2, toy_gpt/gpt2_like\); "
                                                   "pass family= and checkpoint_format="):
        detect_format(tmp_path / "gpt2")
    assert detect_format(tmp_path / "gpt2", family="arlm") == ("arlm", "hf_gpt2")
    assert detect_format(tmp_path / "gpt2", family="toy_gpt") == ("toy_gpt", "gpt2_like")


def test_resolve_source_of_a_run_dir(tmp_path):
    model = xlm.create_model("arlm_tiny", vocab_size=V)
    export(model, tmp_path / "run")
    source = resolve_source(tmp_path / "run")
    assert (source.path, source.family, source.fmt, source.is_run_dir, source.card) == (tmp_path / "run", "arlm",
                                                                                       "xlm", True, None)
