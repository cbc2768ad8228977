"""The design's card names: `arlm_star`, `mlm_star`, `mdlm_star` and `ilm_star` are each family's best shipped
star model, loaded offline; the same names as archs still build untrained models and train; an arch that is not
a card is an error that says so."""

import pytest
import torch

import xlm
from xlm.assets import CardError, resolve_card
from xlm.data.tasks import build_task, task_config
from xlm.recipes import train

FAMILIES = ["arlm", "mlm", "mdlm", "ilm"]


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("XLM_USER_ASSET_DIR", str(tmp_path / "user_cards"))
    monkeypatch.setenv("XLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("XLM_ASSET_PATH", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("family", FAMILIES)
def test_the_star_card_is_the_familys_shipped_star_model(family):
    card = resolve_card(f"{family}_star")
    shipped = resolve_card(f"{family}_star_easy")
    assert (card.checkpoint, card.sha256, card.model_arch, card.task) == (shipped.checkpoint, shipped.sha256,
                                                                          shipped.model_arch, "star_easy")
    assert card.model_arch in (f"{family}_star", f"{family}_star_long")  # the star model, or its longer recipe
    assert card.metrics == shipped.metrics and card.base_dir == shipped.base_dir
    model, again = xlm.load_model(f"{family}_star"), xlm.load_model(f"{family}_star_easy")
    assert type(model).__name__ == type(again).__name__
    state, expected = model.state_dict(), again.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)


def test_load_generator_of_the_ilm_star_card_completes_a_star_prompt():
    example = build_task(task_config("star_easy")).dataset("test")[0]
    completion = xlm.load_generator("ilm_star").generate([example["prompt"]], seed=0)[0]
    assert isinstance(completion, str) and completion.split()


def test_an_arch_that_is_not_a_card_says_how_to_build_it():
    with pytest.raises(CardError) as err:
        xlm.load_model("arlm_tiny")
    message = str(err.value)
    assert "'arlm_tiny' is an arch of family 'arlm'" in message
    assert "xlm.create_model('arlm_tiny', vocab_size=...)" in message and "xlm train --arch arlm_tiny" in message
    with pytest.raises(CardError, match="is an arch"):
        xlm.load_generator("mdlm_tiny")


def test_archs_of_the_star_names_still_build_and_train(capsys):
    model = xlm.create_model("ilm_star", vocab_size=32)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert train.main(["--arch", "ilm_star", "--task", "star_easy", "--dump-config"]) == 0
    dumped = capsys.readouterr().out
    assert "arch: ilm_star" in dumped
