"""Cards of hub checkpoints against a local stand-in for the hub: card -> download -> verify -> convert ->
generate; every file a card loads pinned by sha256 (and `xlm cards pin` writing those pins); revisions; and
failing at once, in one line, when the hub is offline or cannot be reached."""

import hashlib
import json
import re
import socket
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import xlm
from xlm.assets import CardError, ChecksumError, DownloadError, fetch, resolve_card
from xlm.assets import cli as cards_cli
from xlm.assets.download import UnverifiedDownloadWarning
from xlm.assets.store import BrokenCardWarning
from xlm.shipped import cards_dir

from .hub_server import FakeHub

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

REPO = "org/tiny-gpt2"
FILES = ("model.safetensors", "config.json", "tokenizer.json")
CORPUS = ["the cat sat on the mat", "a dog ran in the park", "the bird sang a song at dawn",
          "cats and dogs play in the sun", "the mat is red and the park is green"] * 4


@pytest.fixture(autouse=True)
def card_env(tmp_path, monkeypatch):
    """Own user card dir, card dir and download cache; the hub is reachable unless a test says otherwise."""
    monkeypatch.setenv("XLM_USER_ASSET_DIR", str(tmp_path / "user_cards"))
    monkeypatch.setenv("XLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XLM_ASSET_PATH", str(tmp_path / "cards"))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def gpt2_repo(tmp_path_factory) -> Path:
    """An HF GPT-2 repo as `save_pretrained` writes it: random weights and a byte-level BPE trained here."""
    out = tmp_path_factory.mktemp("tiny-gpt2")
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
    bpe.train_from_iterator(CORPUS, tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                                   initial_alphabet=alphabet))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>",
                                                     bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(out)
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _serve(hub: FakeHub, repo_dir: Path, repo: str = REPO, revision: str = "main") -> dict[str, bytes]:
    served = {name: (repo_dir / name).read_bytes() for name in FILES}
    for name, body in served.items():
        hub.files[(repo, revision, name)] = body
    return served


def _card(tmp_path: Path, **fields) -> dict:
    card = {"model_family": "arlm", "checkpoint": f"hf://{REPO}/model.safetensors", "checkpoint_format": "hf_gpt2",
            "tokenizer": f"hf://{REPO}/tokenizer.json", "sampler": {"max_new_tokens": 4, "strategy": "greedy"},
            **fields}
    file = tmp_path / "cards" / f"{card['name']}.yaml"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(yaml.safe_dump(card, sort_keys=False))
    return card


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there now: a connection is refused at once


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)


# -- card -> download -> verify -> convert -> generate ---------------------------------------------


def _load_generator_from_the_hub(tmp_path: Path, monkeypatch, repo_dir: Path):
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        served = _serve(hub, repo_dir)
        _card(tmp_path, name="tiny_gpt2", sha256={name: _sha(body) for name, body in served.items()})
        with warnings.catch_warnings():
            warnings.simplefilter("error", UnverifiedDownloadWarning)  # every file is pinned: nothing unverified
            generator = xlm.load_generator("tiny_gpt2")
        assert {r.split("/")[-1] for r in hub.requests if r.startswith("GET")} == set(FILES)
    return generator


def test_a_hub_card_downloads_verifies_and_converts(tmp_path, monkeypatch, gpt2_repo):
    generator = _load_generator_from_the_hub(tmp_path, monkeypatch, gpt2_repo)
    reference = transformers.GPT2LMHeadModel.from_pretrained(gpt2_repo).eval()
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(gpt2_repo)
    ids = torch.tensor([tokenizer.encode("the cat sat on the")])
    with torch.no_grad():
        assert torch.allclose(_logits(generator.model, ids), reference(ids).logits, atol=1e-5)
    assert generator.tokenizer.encode("the cat sat on the") == ids[0].tolist()
    assert generator.sampler_config.max_new_tokens == 4


def test_the_hub_cards_generator_completes_as_transformers_does(tmp_path, monkeypatch, gpt2_repo):
    generator = _load_generator_from_the_hub(tmp_path, monkeypatch, gpt2_repo)
    reference = transformers.GPT2LMHeadModel.from_pretrained(gpt2_repo).eval()
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(gpt2_repo)
    ids = torch.tensor([tokenizer.encode("the cat sat on the")])
    with torch.no_grad():
        greedy = reference.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    expected = tokenizer.decode(greedy[0, ids.shape[1]:], skip_special_tokens=True)
    assert expected and generator.generate(["the cat sat on the"])[0] == expected


# -- pins ------------------------------------------------------------------------------------------


def test_every_file_a_card_loads_is_pinned_and_a_tampered_config_is_refused(tmp_path, monkeypatch, gpt2_repo):
    config = json.loads((gpt2_repo / "config.json").read_text())
    tampered = json.dumps({**config, "layer_norm_epsilon": 0.5}).encode()  # a different model, same weights
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        served = _serve(hub, gpt2_repo)
        _card(tmp_path, name="pinned", sha256={name: _sha(body) for name, body in served.items()})
        _card(tmp_path, name="unpinned", sha256=_sha(served["model.safetensors"]))  # the weights alone, as before
        ids = torch.randint(0, 100, (1, 8))
        honest = _logits(xlm.load_model("pinned"), ids)
        hub.files[(REPO, "main", "config.json")] = tampered
        monkeypatch.setenv("XLM_CACHE_DIR", str(tmp_path / "fresh_cache"))
        with pytest.warns(UnverifiedDownloadWarning, match="config.json"):
            assert not torch.allclose(_logits(xlm.load_model("unpinned"), ids), honest)  # silently different
        monkeypatch.setenv("XLM_CACHE_DIR", str(tmp_path / "fresher_cache"))
        with pytest.raises(ChecksumError) as err:
            xlm.load_model("pinned")
        message = str(err.value)
        assert all(s in message for s in ("'pinned'", f"hf://{REPO}/config.json", _sha(served["config.json"]),
                                          _sha(tampered)))

        hub.files[(REPO, "main", "config.json")] = served["config.json"]
        hub.files[(REPO, "main", "tokenizer.json")] = served["tokenizer.json"].replace(b"mat", b"rug")
        with pytest.raises(ChecksumError, match="tokenizer.json"):
            xlm.load_tokenizer("pinned")


def test_a_pin_that_names_no_loaded_file_is_an_error(tmp_path):
    _card(tmp_path, name="typo", sha256={"model.safetensors": "a" * 64, "confg.json": "b" * 64})
    with pytest.raises(CardError, match=r"sha256 pins 'confg.json', which the card does not load; it loads "
                                        r"model.safetensors \(hf://org/tiny-gpt2/model.safetensors\), config.json"):
        xlm.load_model("typo")
    _card(tmp_path, name="bad_hash", sha256={"config.json": "xyz"})
    with pytest.raises(CardError, match="64 hex digits"):
        resolve_card("bad_hash")


def test_revisions_are_pinned_by_name_or_commit(monkeypatch):
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.files[("org/repo", "main", "w.bin")] = b"new"
        hub.files[("org/repo", "v1", "w.bin")] = b"old"
        with pytest.warns(UnverifiedDownloadWarning):
            assert fetch("hf://org/repo/w.bin").read_bytes() == b"new"
            assert fetch("hf://org/repo@v1/w.bin").read_bytes() == b"old"
        commit = FakeHub.commit("v1")
        assert fetch(f"hf://org/repo@{commit}/w.bin", sha256=_sha(b"old")).read_bytes() == b"old"


def test_cards_pin_writes_a_pinned_copy_from_the_cache(tmp_path, monkeypatch, capsys, gpt2_repo):
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        served = _serve(hub, gpt2_repo)
        _card(tmp_path, name="team_gpt2")
        assert cards_cli.main(["pin", "team_gpt2", "--name", "my_gpt2"]) == 2  # nothing fetched yet: nothing to pin
        assert "xlm cards download team_gpt2" in capsys.readouterr().err
        assert cards_cli.main(["download", "team_gpt2"]) == 0
        assert re.search(r"^warning: card 'team_gpt2': .* was downloaded without a sha256 .*xlm cards pin team_gpt2",
                         capsys.readouterr().err, re.MULTILINE)
        assert cards_cli.main(["pin", "team_gpt2"]) == 2  # it would define team_gpt2 a second time
        assert "pass --name" in capsys.readouterr().err
        assert cards_cli.main(["pin", "team_gpt2", "--name", "my_gpt2"]) == 0
        written = tmp_path / "user_cards" / "my_gpt2.yaml"
        pinned = yaml.safe_load(written.read_text())
        commit = FakeHub.commit("main")
        assert pinned["checkpoint"] == f"hf://{REPO}@{commit}/model.safetensors"
        assert pinned["tokenizer"] == f"hf://{REPO}@{commit}/tokenizer.json"
        assert pinned["sha256"] == {name: _sha(body) for name, body in served.items()}
        assert pinned["sampler"] == {"max_new_tokens": 4, "strategy": "greedy"}
        assert cards_cli.main(["pin", "team_gpt2", "--name", "my_gpt2"]) == 2
        assert "exists; pass --force" in capsys.readouterr().err
        assert cards_cli.main(["pin", "team_gpt2", "--name", "my_gpt2", "--force"]) == 0
        with warnings.catch_warnings():
            warnings.simplefilter("error", UnverifiedDownloadWarning)
            model = xlm.load_model("my_gpt2")
    reference = transformers.GPT2LMHeadModel.from_pretrained(gpt2_repo).eval()
    ids = torch.randint(0, 100, (1, 8))
    with torch.no_grad():
        assert torch.allclose(_logits(model, ids), reference(ids).logits, atol=1e-5)


def test_pinning_a_shipped_card_writes_the_users_copy_which_replaces_it(tmp_path, monkeypatch, capsys, gpt2_repo):
    shipped = (cards_dir() / "public.yaml").read_bytes()
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        served = _serve(hub, gpt2_repo, repo="openai-community/gpt2")
        assert cards_cli.main(["download", "gpt2"]) == 0
        assert "\nwarning: card 'gpt2': " in "\n" + capsys.readouterr().err
        assert cards_cli.main(["pin", "gpt2"]) == 0
        card = resolve_card("gpt2")
        assert card.source_file == tmp_path / "user_cards" / "gpt2.yaml"
        assert card.sha256 == {name: _sha(body) for name, body in served.items()}
        assert "gpt2" in xlm.list_cards() and (cards_dir() / "public.yaml").read_bytes() == shipped
        with warnings.catch_warnings():
            warnings.simplefilter("error", UnverifiedDownloadWarning)
            xlm.load_model("gpt2")
    duplicate = tmp_path / "user_cards" / "again.yaml"
    duplicate.write_text(yaml.safe_dump({"name": "gpt2", "description": "a second user card of that name"}))
    with pytest.warns(BrokenCardWarning, match="defined twice"):  # only a shipped card can be replaced
        assert "gpt2" not in xlm.list_cards()
        with pytest.raises(CardError, match="defined twice"):
            xlm.load_model("gpt2")


# -- offline, or no route to the hub ---------------------------------------------------------------


def _fails_at_once(name: str) -> str:
    """The error, which comes in well under the half minute huggingface_hub's retries would take."""
    import huggingface_hub.file_download  # noqa: F401  (imports and registries are ready before the clock starts)
    import xlm.assets.loading

    xlm.list_archs()
    xlm.list_cards()
    start = time.perf_counter()
    with pytest.raises(DownloadError) as err:
        xlm.load_model(name)
    assert time.perf_counter() - start < 2
    return str(err.value)


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "refused"])
def test_a_hub_card_fails_at_once_in_one_line_when_the_hub_is_out_of_reach(how, tmp_path, monkeypatch, capsys):
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.setenv("HF_ENDPOINT", _closed_port_url())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnverifiedDownloadWarning)  # nothing was downloaded: no other line to read
        message = _fails_at_once("gpt2")
        assert cards_cli.main(["download", "gpt2"]) == 2
    assert "\n" not in message and capsys.readouterr().err == f"error: {message}\n"
    for part in ("hf://openai-community/gpt2/model.safetensors", "HF_HUB_OFFLINE is set" if how == "HF_HUB_OFFLINE"
                 else "cannot be reached", "on a machine that reaches the hub, run `xlm cards download gpt2`",
                 f"hf download openai-community/gpt2 model.safetensors --cache-dir {tmp_path / 'cache'}",
                 "XLM_CACHE_DIR"):
        assert part in message


def test_files_already_in_the_cache_load_without_the_hub(tmp_path, monkeypatch, gpt2_repo):
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        served = _serve(hub, gpt2_repo)
        _card(tmp_path, name="cached", sha256={name: _sha(body) for name, body in served.items()})
        assert cards_cli.main(["download", "cached"]) == 0
    ids = torch.randint(0, 100, (1, 8))
    expected = _logits(xlm.load_model("cached"), ids)  # the hub is gone: the cache serves
    monkeypatch.setenv("HF_ENDPOINT", _closed_port_url())
    start = time.perf_counter()
    assert torch.equal(_logits(xlm.load_model("cached"), ids), expected)
    assert time.perf_counter() - start < 5
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert xlm.load_tokenizer("cached").encode("the cat")
    assert torch.equal(_logits(xlm.load_model("cached"), ids), expected)
