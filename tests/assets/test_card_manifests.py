"""Directory checkpoints pinned by a manifest: what `xlm cards add` and `xlm cards pin` write, what it must list
(the files loading reads, the shards an index names), and the manifests a card may not hold."""

import hashlib

import pytest
import torch
import yaml

import xlm
from xlm.assets import CardError, ChecksumError, read_card_file
from xlm.assets import cli as cards_cli
from xlm.assets.card_files import card_files
from xlm.assets.manifest import measure_manifest
from xlm.assets.store import all_cards, is_shipped

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def card_env(tmp_path, monkeypatch):
    monkeypatch.setenv("XLM_USER_ASSET_DIR", str(tmp_path / "user_cards"))
    monkeypatch.setenv("XLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("XLM_ASSET_PATH", raising=False)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sharded_gpt2(path):
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2,
                                                                 n_head=2)).eval()
    model.save_pretrained(path, max_shard_size="20KB")
    return model


def test_pin_writes_the_manifest_of_a_sharded_hf_dir_and_a_swapped_shard_is_refused(tmp_path):
    reference = _sharded_gpt2(tmp_path / "gpt2")
    shards = sorted(p.name for p in (tmp_path / "gpt2").glob("model-*.safetensors"))
    assert len(shards) > 1
    (tmp_path / "gpt2" / "README.md").write_text("notes")  # never read when loading: not pinned
    cards = tmp_path / "user_cards"
    cards.mkdir()
    (cards / "team.yaml").write_text(yaml.safe_dump({"name": "team", "model_family": "arlm",
                                                      "checkpoint": str(tmp_path / "gpt2"),
                                                      "checkpoint_format": "hf_gpt2"}))
    assert cards_cli.main(["pin", "team", "--name", "team_pinned"]) == 0
    pinned = yaml.safe_load((cards / "team_pinned.yaml").read_text())
    assert "sha256" not in pinned
    assert pinned["manifest"] == {name: _sha(tmp_path / "gpt2" / name)
                                  for name in ["config.json", "model.safetensors.index.json", *shards]}
    ids = torch.randint(0, 50, (1, 6))
    with torch.no_grad():
        assert torch.allclose(xlm.load_model("team_pinned")(ids), reference(ids).logits, atol=1e-5)
    first, second = (tmp_path / "gpt2" / shards[0]), (tmp_path / "gpt2" / shards[1])
    first.write_bytes(first.read_bytes()[:-1] + b" ")
    with pytest.raises(ChecksumError, match=shards[0]):
        xlm.load_model("team_pinned")
    assert cards_cli.main(["pin", "team", "--name", "team_pinned", "--force"]) == 0  # the files as they are now
    assert cards_cli.main(["pin", "team_pinned", "--name", "again"]) == 0  # its own manifest matches
    second.write_bytes(second.read_bytes()[:-1] + b" ")
    assert cards_cli.main(["pin", "team_pinned", "--name", "again2"]) == 2  # the card pins other bytes


def test_the_shards_an_index_names_in_a_subdirectory_are_pinned_too(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "m" / "parts").mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, tmp_path / "m" / "parts" / "a.safetensors")
    (tmp_path / "m" / "model.safetensors.index.json").write_text(
        '{"weight_map": {"w": "parts/a.safetensors", "v": "../outside.safetensors"}}')
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    assert set(measure_manifest(tmp_path / "m")) == {"model.safetensors.index.json", "parts/a.safetensors"}


def test_a_manifest_names_paths_inside_a_directory_checkpoint(tmp_path):
    run_file = tmp_path / "c.yaml"
    for manifest, message in [({"../up.json": "a" * 64}, "without '..'"), ({"/abs": "a" * 64}, "without '..'"),
                              ({"model.safetensors": "xyz"}, "64 hex digits"), ({}, "maps the paths")]:
        run_file.write_text(yaml.safe_dump({"name": "c", "manifest": manifest}))
        with pytest.raises(CardError, match=message):
            read_card_file(run_file)
    weights = tmp_path / "w" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"w")
    (tmp_path / "user_cards").mkdir()
    (tmp_path / "user_cards" / "f.yaml").write_text(yaml.safe_dump(
        {"name": "f", "model_family": "arlm", "checkpoint": str(weights), "checkpoint_format": "hf_gpt2",
         "manifest": {"model.safetensors": _sha(weights)}}))
    with pytest.raises(CardError, match="is a file"):
        xlm.load_model("f")


def test_every_shipped_card_pins_each_local_file_it_loads():
    shipped = [card for card in all_cards().values() if is_shipped(card) and card.checkpoint
               and not card.checkpoint.startswith("hf://")]
    assert shipped
    for card in shipped:
        files = card_files(card)
        assert set(files) == {"checkpoint", "config"} and all(f.sha256 for f in files.values()), card.name
