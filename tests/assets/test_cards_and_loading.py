"""Cards, the card store, verified downloads from a local stand-in for the hub, and loading
models, tokenizers and generators from run dirs and cards."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

import xlm
from xlm.assets import CardError, ChecksumError, DownloadError, fetch, read_card_file, resolve_card
from xlm.assets import cli as cards_cli
from xlm.assets.download import UnverifiedDownloadWarning
from xlm.assets.store import BrokenCardWarning
from xlm.data.tokenizers import UnknownTokenError
from xlm.errors import InvalidValueError
from xlm.run_dir import RunDirError

from .hub_server import FakeHub

from tests.tiny_run_dir import TOK, tiny_run_dir



@pytest.fixture(autouse=True)
def card_env(tmp_path, monkeypatch):
    """Each test has its own user card dir and download cache; nothing from the real home is read."""
    monkeypatch.setenv("XLM_USER_ASSET_DIR", str(tmp_path / "user_cards"))
    monkeypatch.setenv("XLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("XLM_ASSET_PATH", raising=False)


def _write(path: Path, docs: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- cards and the store ---------------------------------------------------------------------------


def test_user_cards_and_the_cache_follow_xdg_unless_xlm_names_them(tmp_path, monkeypatch, capsys):
    from xlm.assets.store import user_card_dir
    from xlm.data.disk_cache import default_cache_root

    for name in ("XLM_USER_ASSET_DIR", "XLM_CACHE_DIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_card_dir() == tmp_path / "home" / ".config" / "xlm" / "cards"
    assert default_cache_root() == tmp_path / "home" / ".cache" / "xlm"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_cache_root() == tmp_path / "cache" / "xlm"
    assert cards_cli.main(["add", str(tiny_run_dir(tmp_path / "run")), "--name", "xdg_tiny"]) == 0
    assert (tmp_path / "cfg" / "xlm" / "cards" / "xdg_tiny.yaml").is_file()
    assert not (tmp_path / "home").exists()
    assert "xdg_tiny" in capsys.readouterr().out
    monkeypatch.setenv("XLM_USER_ASSET_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XLM_CACHE_DIR", str(tmp_path / "xlm_cache"))
    assert (user_card_dir(), default_cache_root()) == (tmp_path / "mine", tmp_path / "xlm_cache")


def test_load_model_takes_dtype_names_and_refuses_devices_this_machine_lacks_before_reading():
    assert next(xlm.load_model("mlm_star_easy", dtype="bfloat16").parameters()).dtype == torch.bfloat16
    assert next(xlm.load_model("mlm_star_easy", dtype="fp32", device="cpu").parameters()).dtype == torch.float32
    with pytest.raises(InvalidValueError, match=r"dtype='int8' is not a floating-point dtype name"):
        xlm.load_model("mlm_star_easy", dtype="int8")
    with pytest.raises(InvalidValueError, match=r"device='tpu' is not a device"):
        xlm.load_generator("mlm_star_easy", device="tpu")
    if not torch.cuda.is_available():  # before: "model.safetensors is unreadable ... it may be truncated"
        with pytest.raises(InvalidValueError, match=r"device='cuda' but CUDA is not available here; use 'cpu'"):
            xlm.load_model("mlm_star_easy", device="cuda")
        with pytest.raises(InvalidValueError, match=r"device='cuda' but CUDA is not available"):  # was torch's
            xlm.create_model("ilm_star", vocab_size=30, device="cuda")  # AssertionError
    assert next(xlm.create_model("ilm_star", vocab_size=30, dtype="bf16").parameters()).dtype == torch.bfloat16


def test_several_cards_per_file_and_base_inheritance(tmp_path, monkeypatch):
    file = _write(tmp_path / "cards" / "family.yaml", [
        {"name": "base_card", "model_family": "arlm", "model_arch": "arlm_tiny",
         "model_config": {"vocab_size": 27, "num_layers": 2}, "checkpoint": "weights/model.safetensors",
         "description": "the base"},
        {"name": "child", "base": "base_card", "model_config": {"num_layers": 3}, "description": "a child"},
        {"name": "grandchild", "base": "child", "task": "star_easy"},
    ])
    assert [c.name for c in read_card_file(file)] == ["base_card", "child", "grandchild"]
    monkeypatch.setenv("XLM_ASSET_PATH", f"/nonexistent:{file.parent}")
    card = resolve_card("grandchild")
    assert card.model_config == {"vocab_size": 27, "num_layers": 3}
    assert (card.model_arch, card.task, card.description) == ("arlm_tiny", "star_easy", "a child")
    assert card.base_dir == file.parent  # the inherited relative checkpoint stays relative to its own file
    assert set(xlm.list_cards()) >= {"base_card", "child", "grandchild"}


@pytest.mark.parametrize("doc, message", [
    ({"name": "x", "chekpoint": "a"}, "unknown card field.*'chekpoint' \\(did you mean 'checkpoint'\\?\\)"),
    ({"description": "no name"}, "needs a non-empty string `name`"),
    ({"name": "x", "model_config": [1, 2]}, "field 'model_config' must be a mapping"),
    ({"name": "x", "sha256": "abc"}, "sha256 must be 64 hex digits"),
    ({"name": "x", "checkpoint": 5}, "field 'checkpoint' must be a string"),
    ({None: None, "name": "x"}, "card field names are strings, got None"),  # what a stray `?` line parses to
])
def test_malformed_cards_name_the_file_and_the_problem(tmp_path, doc, message):
    file = _write(tmp_path / "bad.yaml", [doc])
    with pytest.raises(CardError, match=message) as err:
        read_card_file(file)
    assert str(file) in str(err.value)


def test_invalid_yaml_duplicates_cycles_and_unknown_names(tmp_path, monkeypatch):
    broken = tmp_path / "broken" / "b.yaml"
    broken.parent.mkdir()
    broken.write_text("name: [unclosed\n")
    with pytest.raises(CardError, match="not valid YAML"):
        read_card_file(broken)
    first = _write(tmp_path / "a" / "one.yaml", [{"name": "dup"}])
    second = _write(tmp_path / "b" / "two.yaml", [{"name": "dup"}])
    monkeypatch.setenv("XLM_ASSET_PATH", f"{first.parent}:{second.parent}")
    with pytest.warns(BrokenCardWarning, match="defined twice"):  # left out and reported; the other cards work
        assert "dup" not in xlm.list_cards() and "arlm_star" in xlm.list_cards()
        with pytest.raises(CardError, match="defined twice") as err:
            resolve_card("dup")
    assert str(first) in str(err.value) and str(second) in str(err.value)
    cyc = _write(tmp_path / "c" / "cycle.yaml", [{"name": "p", "base": "q"}, {"name": "q", "base": "p"},
                                                 {"name": "orphan", "base": "nowhere"}])
    monkeypatch.setenv("XLM_ASSET_PATH", str(cyc.parent))
    with pytest.raises(CardError, match="cycle in its base chain: p -> q -> p"):
        resolve_card("p")
    with pytest.raises(CardError, match="base 'nowhere', which is not a known card"):
        resolve_card("orphan")
    with pytest.raises(CardError, match="no card named 'qq'.*did you mean q"):
        resolve_card("qq")
    monkeypatch.chdir(tmp_path)  # a bare name loads a card or a directory here: a miss names both
    with pytest.raises(CardError, match=r"no card named 'qq'.*; nor is there a file or directory 'qq' in "
                                        + str(tmp_path).replace("/", r"\/")):
        xlm.load_model("qq")
    with pytest.raises(CardError, match="cycle in its base chain") as other:  # said as it is
        xlm.load_model("p")
    assert "nor is there" not in str(other.value)


# -- downloads ------------------------------------------------------------------------------------


def test_hub_downloads_pin_revisions_and_verify_checksums(monkeypatch):
    main, old = b"main weights" * 100, b"old weights" * 100
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.files[("org/repo", "main", "sub/w.bin")] = main
        hub.files[("org/repo", "v1", "sub/w.bin")] = old
        with pytest.warns(UnverifiedDownloadWarning, match="without a sha256"):
            assert fetch("hf://org/repo/sub/w.bin").read_bytes() == main
        assert fetch("hf://org/repo@v1/sub/w.bin", sha256=hashlib.sha256(old).hexdigest()).read_bytes() == old
        wrong = "0" * 64
        with pytest.raises(ChecksumError) as err:
            fetch("hf://org/repo@v1/sub/w.bin", sha256=wrong, card="my_card")
        message = str(err.value)
        assert all(s in message for s in ("my_card", "hf://org/repo@v1/sub/w.bin", wrong,
                                          hashlib.sha256(old).hexdigest(), "deleted"))
        with pytest.raises(DownloadError, match="org/repo"):
            fetch("hf://org/repo/missing.bin")


def test_url_downloads_are_atomic_verified_and_refetched_when_corrupt(monkeypatch):
    body = b"x" * 5000
    digest = hashlib.sha256(body).hexdigest()
    with FakeHub() as hub:
        hub.plain["/files/w.bin"] = body
        hub.plain["/files/cut.bin"] = body
        hub.truncate.add("/files/cut.bin")
        path = fetch(f"{hub.url}/files/w.bin", sha256=digest)
        assert path.read_bytes() == body
        path.write_bytes(b"corrupted")  # a damaged cache entry is fetched again
        assert fetch(f"{hub.url}/files/w.bin", sha256=digest).read_bytes() == body
        with pytest.raises(DownloadError):
            fetch(f"{hub.url}/files/cut.bin")
        leftovers = [p for p in path.parent.parent.rglob("*") if p.is_file() and "cut" in p.name]
        assert leftovers == []  # no partial file is left to be mistaken for a complete one


def test_uri_schemes_and_local_files(tmp_path):
    for uri in ("ftp://host/w.bin", "s3://bucket/w.bin", "http://example.com/w.bin"):
        with pytest.raises(ValueError, match="allowed|only allowed to localhost"):
            fetch(uri)
    f = tmp_path / "cards" / "w.bin"
    f.parent.mkdir()
    f.write_bytes(b"abc")
    assert fetch(f"file://{f}") == f
    assert fetch("w.bin", base_dir=f.parent) == f
    with pytest.raises(ChecksumError):
        fetch("w.bin", base_dir=f.parent, sha256="1" * 64)
    assert f.exists()  # a local file is never deleted
    with pytest.raises(FileNotFoundError, match="not found"):
        fetch("missing.bin", base_dir=f.parent, card="c")
    (tmp_path / "secret.bin").write_bytes(b"s")
    with pytest.raises(ValueError, match="leaves the card's directory"):
        fetch("../secret.bin", base_dir=f.parent, card="c")
    assert fetch(str(tmp_path / "secret.bin"), base_dir=f.parent) == tmp_path / "secret.bin"  # absolute: explicit


# -- loading ---------------------------------------------------------------------------------------


def test_load_model_from_run_dir_card_and_hub(tmp_path, monkeypatch, capsys):
    run = tiny_run_dir(tmp_path / "runs" / "r")
    model = xlm.load_model(run)
    assert not model.training
    assert cards_cli.main(["add", str(run), "--name", "my_arlm"]) == 0
    assert _same_weights(xlm.load_model("my_arlm"), model)
    assert cards_cli.main(["add", str(run), "--name", "my_arlm"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cards_cli.main(["show", "my_arlm"]) == 0 and "checkpoint_format: xlm" in capsys.readouterr().out
    exported = tmp_path / "exported"  # an export of a model no run made: no arch, no task
    xlm.export(model, exported)
    assert cards_cli.main(["add", str(exported), "--name", "my_export"]) == 0
    assert resolve_card("my_export").description == f"arlm model ({exported})"

    weights = (run / "model.safetensors").read_bytes()
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.files[("me/tiny", "main", "model.safetensors")] = weights
        hub.files[("me/tiny", "main", "config.json")] = (run / "config.json").read_bytes()
        _write(tmp_path / "user_cards" / "hub.yaml", [
            {"name": "hub_arlm", "model_family": "arlm", "checkpoint": "hf://me/tiny/model.safetensors",
             "checkpoint_format": "xlm", "sha256": hashlib.sha256(weights).hexdigest(),
             "sampler": {"max_new_tokens": 3}},
            {"name": "hub_arlm_bad", "base": "hub_arlm", "sha256": "f" * 64}])
        assert _same_weights(xlm.load_model("hub_arlm"), model)
        generator = xlm.load_generator("hub_arlm")
        assert generator.sampler_config.max_new_tokens == 3 and generator.sampler_config.strategy == "greedy"
        with pytest.raises(ChecksumError, match="hub_arlm_bad"):
            xlm.load_model("hub_arlm_bad")


def test_generator_generates_text_and_ids(tmp_path):
    run = tiny_run_dir(tmp_path / "r")
    generator = xlm.load_generator(run, max_new_tokens=4)
    texts = generator.generate(["1 2 3", "4 5"])
    assert len(texts) == 2 and all(len(t.split()) <= 4 for t in texts)
    ids = generator.generate_ids(torch.tensor([[8, 9, 10]]), max_new_tokens=2)
    assert ids.shape[0] == 1 and ids.shape[1] <= 2
    assert TOK.decode(ids[0]) == generator.generate(["1 2 3"], max_new_tokens=2)[0]
    with pytest.raises(UnknownTokenError, match="'banana'"):
        generator.generate(["1 banana 3"])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generator.generate_ids([[1000]])


def test_a_string_is_one_prompt_and_no_prompts_are_no_completions(tmp_path):
    """generate("1 2 3") is the prompt, not five one-character ones; an empty list is not an IndexError."""
    generator = xlm.load_generator(tiny_run_dir(tmp_path / "r"), max_new_tokens=4)
    assert generator.generate("1 2 3", seed=0) == generator.generate(["1 2 3"], seed=0)
    assert generator.generate([]) == [] and generator.generate_ids([]).shape == (0, 0)


def test_sampler_settings_given_as_a_mapping_name_the_keyword_form(tmp_path):
    run = tiny_run_dir(tmp_path / "r")
    with pytest.raises(InvalidValueError, match=r"as keywords, e.g. load_generator\(name, top_p=0.9\)"):
        xlm.load_generator(run, sampler={"max_new_tokens": 4})
    with pytest.raises(RunDirError, match=r"unknown sampler key 'colour'\. Known sampler keys: "):
        xlm.load_generator(run, colour=1)  # nothing close: the sentence still ends before the list


def test_strict_loading_reports_every_bad_key_and_corrupt_files(tmp_path):
    from safetensors.torch import load_file, save_file

    run = tiny_run_dir(tmp_path / "r")
    state = load_file(run / "model.safetensors")
    first = sorted(state)[0]
    state.pop(first)
    state["extra.weight"] = torch.zeros(1)
    shaped = sorted(state)[1]
    state[shaped] = torch.zeros(3, 3)
    save_file(state, run / "model.safetensors")
    with pytest.raises(RunDirError) as err:
        xlm.load_model(run)
    message = str(err.value)
    assert all(s in message for s in (f"missing keys [{first}]", "unexpected keys [extra.weight]", shaped))

    run2 = tiny_run_dir(tmp_path / "r2")
    data = (run2 / "model.safetensors").read_bytes()
    (run2 / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunDirError, match="model.safetensors is unreadable.*truncated"):
        xlm.load_model(run2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        xlm.load_model(tmp_path / "nowhere")
    with pytest.raises(CardError, match="no card named"):
        xlm.load_model("no_such_card")
    config = json.loads((run2 / "config.json").read_text())
    assert config["family"] == "arlm"


def test_hf_model_dirs_and_hub_cards_load_through_the_converters(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=2,
                                                                n_head=2)).eval()
    gpt2.save_pretrained(tmp_path / "gpt2")
    bert = transformers.BertForMaskedLM(transformers.BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2,
                                                                num_attention_heads=2, intermediate_size=64,
                                                                max_position_embeddings=32)).eval()
    bert.save_pretrained(tmp_path / "bert")
    ids = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        ours = xlm.load_model(tmp_path / "gpt2")
        assert type(ours).__name__ == "ArlmModel"
        assert torch.allclose(ours(ids), gpt2(ids).logits, atol=1e-5)
        assert torch.allclose(xlm.load_model(tmp_path / "bert")(ids), bert(ids).logits, atol=1e-5)
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        weights = (tmp_path / "gpt2" / "model.safetensors").read_bytes()
        hub.files[("openai/tiny-gpt2", "main", "model.safetensors")] = weights
        hub.files[("openai/tiny-gpt2", "main", "config.json")] = (tmp_path / "gpt2" / "config.json").read_bytes()
        _write(tmp_path / "user_cards" / "gpt.yaml", [
            {"name": "tiny_gpt2", "model_family": "arlm", "checkpoint": "hf://openai/tiny-gpt2/model.safetensors",
             "checkpoint_format": "hf_gpt2", "sha256": hashlib.sha256(weights).hexdigest()}])
        with torch.no_grad():
            assert torch.allclose(xlm.load_model("tiny_gpt2")(ids), gpt2(ids).logits, atol=1e-5)
    with pytest.raises(ValueError, match="pass family="):
        xlm.load_model(tmp_path / "gpt2" / "model.safetensors")
