"""`xlm.load_model(path)` with no other argument, on the files xlm-core writes: a Lightning `.ckpt` of its Harness
and a model-only `.pt` state dict (its `extract_model_state_dict` command: the `model.*` keys, prefix stripped)
with the hub export's config.json beside it. The family is told by the checkpoint where it can be (a `_target_`
in the hyper-parameters, the heads only ILM and MDLM have); where it cannot (ARLM and MLM share every tensor
name), the error names both and the argument that picks one."""

import json

import pytest
import torch

import xlm
from xlm.errors import ConversionError
from xlm.interop.detect import FormatDetectionError

from tests.models.arlm import test_arlm_legacy as arlm_core
from tests.models.ilm import test_ilm_legacy as ilm_core
from tests.models.mdlm import test_mdlm_legacy as mdlm_core
from tests.models.mlm import test_mlm_legacy as mlm_core
from tests.xlm_core_fixtures import write_hub_export, write_lightning_checkpoint

CORE = {"arlm": arlm_core, "mlm": mlm_core, "ilm": ilm_core, "mdlm": mdlm_core}
TARGETS = {"arlm": "arlm.model_arlm.RotaryTransformerARLMModel", "mlm": "mlm.model_mlm.RotaryTransformerMLMModel",
           "ilm": ilm_core.TARGET, "mdlm": "mdlm.model_mdlm.MDLMModel"}


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _model_only(path, family: str, *, config: bool = True):
    """xlm-core's model-only state dict, with the constructor arguments its hub export writes beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(CORE[family].xlm_core_state()), path)
    if config:
        (path.parent / "config.json").write_text(json.dumps(CORE[family].hub_config()))
    return path


@pytest.mark.parametrize("family, target", [("arlm", True), ("mlm", True), ("ilm", True), ("ilm", False)])
def test_a_lightning_checkpoint_loads_with_no_arguments(family, target, tmp_path):
    hyper = {"model": CORE[family].hub_config(**({"_target_": TARGETS[family]} if target else {}))}
    path = write_lightning_checkpoint(tmp_path / "last.ckpt", CORE[family].xlm_core_state(), hyper=hyper)
    model = xlm.load_model(path)
    assert isinstance(model.config, xlm.get_family(family).config_class)
    assert _same(model, xlm.load_model(path, family=family, checkpoint_format="xlm_core"))


def test_a_model_only_state_dict_loads_with_no_arguments_when_its_heads_tell(tmp_path):
    path = _model_only(tmp_path / "ilm" / "model.pt", "ilm")
    lightning = write_lightning_checkpoint(tmp_path / "last.ckpt", ilm_core.xlm_core_state(),
                                           hyper={"model": ilm_core.hub_config()})
    assert _same(xlm.load_model(path), xlm.load_model(lightning))
    alone = _model_only(tmp_path / "no_config" / "model.pt", "ilm", config=False)
    with pytest.raises(ConversionError, match="carries no config, and there is no config.json beside it"):
        xlm.load_model(alone)


@pytest.mark.parametrize("kind", ["ckpt", "pt"])
def test_xlm_core_mdlm_loads_with_no_arguments_and_computes_xlm_cores_ddit(kind, tmp_path):
    if kind == "ckpt":
        path = write_lightning_checkpoint(tmp_path / "last.ckpt", mdlm_core.xlm_core_state(),
                                          hyper={"model": mdlm_core.hub_config()})
    else:
        path = _model_only(tmp_path / "mdlm" / "model.pt", "mdlm")
    model = xlm.load_model(path)
    assert isinstance(model.config, xlm.get_family("mdlm").config_class)
    ids, noise, mask = mdlm_core.batch()
    with torch.no_grad():
        ours = model(ids, noise, attention_mask=mask)
    reference = mdlm_core.xlm_core_forward(mdlm_core.xlm_core_state(), ids, noise, mask)
    assert torch.allclose(ours[mask], reference[mask], atol=1e-5)


@pytest.mark.parametrize("kind", ["ckpt", "pt"])
def test_arlm_and_mlm_without_a_target_name_both_and_the_argument(kind, tmp_path):
    if kind == "ckpt":
        path = write_lightning_checkpoint(tmp_path / "last.ckpt", arlm_core.xlm_core_state(),
                                          hyper={"model": arlm_core.hub_config()})
    else:
        path = _model_only(tmp_path / "arlm" / "model.pt", "arlm")
    with pytest.raises(FormatDetectionError) as err:
        xlm.load_model(path)
    message = str(err.value)
    assert "recognised by 2 converters (arlm/xlm_core, mlm/xlm_core)" in message and "pass family=" in message
    model = xlm.load_model(path, family="arlm")
    assert isinstance(model.config, xlm.get_family("arlm").config_class)
    ids = torch.randint(0, arlm_core.V, (2, arlm_core.S))
    with torch.no_grad():
        assert torch.allclose(model(ids), arlm_core.xlm_core_forward(arlm_core.xlm_core_state(), ids), atol=1e-5)


@pytest.mark.parametrize("family", ["arlm", "mlm"])
def test_an_arlm_or_mlm_hub_export_is_told_apart_by_its_constructor_arguments(family, tmp_path):
    """A hub export's config.json lists every constructor argument: only the MLM takes `mask_idx`."""
    core = CORE[family]
    path = write_hub_export(tmp_path / family, core.xlm_core_state(), core.hub_config())
    model = xlm.load_model(path)
    assert isinstance(model.config, xlm.get_family(family).config_class)
    assert _same(model, xlm.load_model(path, family=family))
