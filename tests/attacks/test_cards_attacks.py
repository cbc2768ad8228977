"""Attacks on asset cards (issue 28: failure 5, and the card parts of failure 6), each as an attacker would try it:
checksums that do not cover what a card loads, card files made to grow without bound or to break every lookup,
and card names that write outside the card dir. Then Hypothesis fuzzing of card files: reading one gives cards
or a CardError, nothing else, and quickly."""

import hashlib
import json
import string
import time
import warnings
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xlm
from xlm.assets import CardError, ChecksumError, read_card_file, resolve_card
from xlm.assets import cli as cards_cli
from xlm.assets.card import MAX_FILE_BYTES
from xlm.assets.download import UnverifiedDownloadWarning

from tests.tiny_run_dir import TOK, tiny_run_dir
from tests.assets.hub_server import FakeHub



@pytest.fixture(autouse=True)
def card_env(tmp_path, monkeypatch):
    """Own user card dir and download cache; no other card dir; the shipped cards load offline."""
    monkeypatch.setenv("XLM_USER_ASSET_DIR", str(tmp_path / "user_cards"))
    monkeypatch.setenv("XLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("XLM_ASSET_PATH", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _user_card(tmp_path: Path, file: str, text: str) -> Path:
    path = tmp_path / "user_cards" / file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _tampered_config(config: bytes) -> bytes:
    """The attack of the issue: the same weights, a different rotary base and a sampler that samples hot."""
    data = json.loads(config)
    data["model_config"]["rope_base"] = 7.0
    data["sampler_config"].update(strategy="sample", temperature=9.0)
    return json.dumps(data).encode()


# -- 5: checksums cover everything a card loads --------------------------------------------------------------------


def test_a_directory_checkpoint_with_a_wrong_sha256_is_refused(tmp_path):
    run = tiny_run_dir(tmp_path / "run")
    _user_card(tmp_path, "dir_card.yaml", yaml.safe_dump({"name": "dir_card", "model_family": "arlm",
                                                           "checkpoint": str(run), "checkpoint_format": "xlm",
                                                           "sha256": "0" * 64}))
    with pytest.raises(ChecksumError) as err:
        xlm.load_model("dir_card")
    assert all(s in str(err.value) for s in ("'dir_card'", str(run), "directory", "manifest"))
    assert cards_cli.main(["pin", "dir_card", "--force"]) == 0  # what the message says to do
    assert set(resolve_card("dir_card").manifest) == {"config.json", "model.safetensors"}
    assert not xlm.load_model("dir_card").training


def test_cards_add_pins_every_file_loading_reads_and_a_tampered_one_is_refused(tmp_path):
    run = tiny_run_dir(tmp_path / "run")
    assert cards_cli.main(["add", str(run), "--name", "mine"]) == 0
    written = yaml.safe_load((tmp_path / "user_cards" / "mine.yaml").read_text())
    files = {"config.json", "model.safetensors"}
    assert written["manifest"] == {name: _sha((run / name).read_bytes()) for name in files}
    assert xlm.load_generator("mine").sampler_config.strategy == "greedy"

    honest = (run / "config.json").read_bytes()
    (run / "config.json").write_bytes(_tampered_config(honest))
    with pytest.raises(ChecksumError, match=f"config.json has sha256 {_sha(_tampered_config(honest))}.*{run}"):
        xlm.load_generator("mine")
    (run / "config.json").write_bytes(honest)
    other = tiny_run_dir(tmp_path / "other", seed=1)
    (run / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(ChecksumError, match="model.safetensors"):  # other weights of the same shapes
        xlm.load_model("mine")


def test_a_file_loading_would_read_cannot_be_slipped_into_a_pinned_dir(tmp_path):
    run = tiny_run_dir(tmp_path / "run")
    assert cards_cli.main(["add", str(run), "--name", "mine"]) == 0
    (run / "eval_star_easy_test.json").write_text("{}")  # what `xlm eval` writes beside: never read when loading
    assert not xlm.load_model("mine").training
    (run / "tokenizer.json").write_text("{}")  # load_tokenizer would read this one
    with pytest.raises(ChecksumError) as err:
        xlm.load_tokenizer("mine")
    assert all(s in str(err.value) for s in ("tokenizer.json", "does not pin", "xlm cards pin mine --force"))
    assert cards_cli.main(["pin", "mine", "--force"]) == 0  # the dir's files as they are now, pinned again
    assert set(resolve_card("mine").manifest) == {"config.json", "model.safetensors", "tokenizer.json"}
    assert xlm.load_tokenizer("mine").encode("3 4") == TOK.encode("3 4")


def test_a_remote_config_beside_pinned_weights_is_reported_as_unpinned(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    run = tiny_run_dir(tmp_path / "run")
    weights, config = (run / "model.safetensors").read_bytes(), (run / "config.json").read_bytes()
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.files[("me/tiny", "main", "model.safetensors")] = weights
        hub.files[("me/tiny", "main", "config.json")] = _tampered_config(config)
        _user_card(tmp_path, "hub.yaml", yaml.safe_dump_all([
            {"name": "weights_pinned", "model_family": "arlm", "checkpoint": "hf://me/tiny/model.safetensors",
             "checkpoint_format": "xlm", "sha256": _sha(weights)},
            {"name": "all_pinned", "base": "weights_pinned",
             "sha256": {"model.safetensors": _sha(weights), "config.json": _sha(config)}}]))
        with pytest.warns(UnverifiedDownloadWarning) as record:
            generator = xlm.load_generator("weights_pinned")
        assert generator.sampler_config.temperature == 9.0  # what an unpinned config can do: hence the warning
        unpinned = [str(w.message) for w in record if "config.json" in str(w.message)]
        assert len(unpinned) >= 1 and all(s in unpinned[0] for s in (
            "'weights_pinned'", "hf://me/tiny/config.json", "pins its weights but not this config.json",
            "xlm cards pin weights_pinned"))
        assert not any("model.safetensors" in str(w.message) for w in record)  # the weights are verified
        with pytest.raises(ChecksumError, match="hf://me/tiny/config.json"):
            xlm.load_model("all_pinned")


# -- 6: bounded card files, one bad file breaks nothing else, safe names --------------------------------------------

ALIAS_BOMB = "name: bomb\nmodel_config:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"  {b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))


def test_a_yaml_alias_bomb_is_refused_in_one_line_naming_the_file(tmp_path, capsys):
    bomb = _user_card(tmp_path, "bomb.yaml", ALIAS_BOMB)
    assert len(ALIAS_BOMB.encode()) < 700  # 9**9 strings once expanded, as `xlm cards show` did
    with pytest.raises(CardError) as err:
        read_card_file(bomb)
    message = str(err.value)
    assert "\n" not in message and all(s in message for s in (str(bomb), "line 3", "aliases", "base:"))
    assert cards_cli.main(["show", "bomb"]) == 2
    out = capsys.readouterr()
    warning, error = out.err.splitlines()  # the store skips the file, then the name is refused: one line each
    assert out.out == "" and warning.startswith(f"warning: skipped {bomb}, line ") and "aliases" in warning
    assert error.startswith("error: card 'bomb' cannot be used: its card file is broken: ") and str(bomb) in error


@pytest.mark.parametrize("text, why", [
    ("name: [unclosed\n", "not valid YAML"),
    ("name: broken\nchekpoint: x\n", "did you mean 'checkpoint'"),
    ("name: ../../outside\n", "card name"),
    ("name: deep\nmodel_config: " + "[" * 5000 + "\n", "nested deeper than"),
    ("name: big\nmodel_config: {n: " + "9" * 5000 + "}\n", "cannot be read"),
    ("name: when\ndescription: 2001-13-45\n", "cannot be read"),
])
def test_one_bad_card_file_is_reported_and_skipped_and_every_other_card_works(tmp_path, text, why):
    run = tiny_run_dir(tmp_path / "run")
    _user_card(tmp_path, "good.yaml", yaml.safe_dump({"name": "good", "checkpoint": str(run),
                                                       "checkpoint_format": "xlm", "model_family": "arlm"}))
    broken = _user_card(tmp_path, "broken.yaml", text)
    with pytest.warns(UserWarning, match=f"skipped {broken}.*{why}"):
        cards = xlm.list_cards()
    assert {"good", "arlm_star", "gpt2"} <= set(cards)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not xlm.load_model("good").training and not xlm.load_model("arlm_star").training
        with pytest.raises(CardError) as err:
            resolve_card("broken")  # the name the file would define, as `xlm cards add` names its files
    assert all(s in str(err.value) for s in ("'broken'", str(broken), "broken", why.split(" ")[0]))


def test_invalid_utf8_in_a_card_file_names_the_file_and_line(tmp_path):
    bad = tmp_path / "user_cards" / "latin.yaml"
    bad.parent.mkdir()
    bad.write_bytes(b"name: latin\ndescription: caf\xe9\n")
    with pytest.raises(CardError, match=f"{bad}, line 2: not UTF-8 text"):
        read_card_file(bad)


def test_a_name_defined_twice_is_refused_but_breaks_no_other_card(tmp_path, monkeypatch):
    run = tiny_run_dir(tmp_path / "run")
    card = {"checkpoint": str(run), "checkpoint_format": "xlm", "model_family": "arlm"}
    first = _user_card(tmp_path, "one.yaml", yaml.safe_dump({"name": "dup", **card}))
    other = tmp_path / "team_cards" / "two.yaml"
    other.parent.mkdir()
    other.write_text(yaml.safe_dump({"name": "dup", **card}))
    monkeypatch.setenv("XLM_ASSET_PATH", str(other.parent))
    with pytest.warns(UserWarning, match="defined twice"):
        assert "dup" not in xlm.list_cards() and "arlm_star" in xlm.list_cards()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CardError) as err:
            xlm.load_model("dup")
        assert not xlm.load_model("arlm_star").training
    assert str(first) in str(err.value) and str(other) in str(err.value)


@pytest.mark.parametrize("name", ["../x/important", "{tmp}/x/important", "a/b", "..", ".hidden", "", "a\\b", "x" * 200])
def test_cards_add_refuses_a_name_that_is_not_a_card_name(tmp_path, capsys, name):
    name = name.format(tmp=tmp_path)  # an absolute name too: the card dir joined with it is that path
    important = tmp_path / "x" / "important.yaml"
    important.parent.mkdir()
    important.write_text("keep: me\n")
    run = tiny_run_dir(tmp_path / "run")
    assert cards_cli.main(["add", str(run), "--name", name]) == 2
    assert "card name" in capsys.readouterr().err
    assert important.read_text() == "keep: me\n" and not (tmp_path / "user_cards").exists()
    assert cards_cli.main(["pin", "arlm_star", "--name", name]) == 2
    assert "card name" in capsys.readouterr().err


def test_cards_add_never_overwrites_a_card_file_without_force(tmp_path, capsys):
    run = tiny_run_dir(tmp_path / "run")
    notes = _user_card(tmp_path, "notes.yaml", yaml.safe_dump({"name": "team_model", "description": "kept by hand"}))
    kept = notes.read_text()
    for force in ([], ["--force"]):  # a file of that name holds another card, which even --force would lose
        assert cards_cli.main(["add", str(run), "--name", "notes", *force]) == 2
        assert "holds other cards (team_model)" in capsys.readouterr().err and notes.read_text() == kept
    assert cards_cli.main(["add", str(run), "--name", "mine"]) == 0
    assert cards_cli.main(["add", str(run), "--name", "mine"]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert cards_cli.main(["add", str(run), "--name", "mine", "--force"]) == 0


# -- fuzzing: a card file gives cards or a CardError, never anything else, never slowly -----------------------------

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])
SECONDS = 5.0  # reading any card file within the size limit: about a second at worst, on a busy machine

fragments = st.sampled_from([
    "name: x\n", "name: ", "base: y\n", "model_config:", " {", "}", " [", "]", ", ", ": ", "\n", "  ", "- ", "---\n",
    "&a ", "*a", "&b ", "*b", "<<: *a\n", "!!binary ", "!!python/object:os.system ", "!!str ", "!!int ", "? ",
    "sha256: ", "0" * 64, "manifest: {model.safetensors: " + "a" * 64 + "}\n", "checkpoint: ../up\n", "~", "null",
    "1e999", "0x1f", "1:30:00", "2001-12-14", "2001-13-45", "9" * 40, "'quoted'", '"\\x00"', "|\n  block\n", "#c\n",
    "\t", "\ufeff", "é", "\x85", "\x00", "%YAML 1.1\n", "...\n",
])
card_text = st.one_of(st.lists(fragments, max_size=30).map("".join), st.text(max_size=200),
                      st.text(alphabet=string.printable, max_size=200))


def _reads_or_refuses(path: Path) -> None:
    start = time.perf_counter()
    try:
        cards = read_card_file(path)
    except CardError as err:
        assert str(path) in str(err) and "\n" not in str(err)
    else:
        assert all(isinstance(card, xlm.assets.AssetCard) for card in cards)
    assert time.perf_counter() - start < SECONDS


@FUZZ
@given(card_text)
def test_fuzzed_card_text_gives_cards_or_a_card_error(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _reads_or_refuses(path)


@FUZZ
@given(st.binary(max_size=200))
def test_fuzzed_card_bytes_give_cards_or_a_card_error(tmp_path, data):
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(data)
    _reads_or_refuses(path)


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                            max_size=3), max_leaves=8)
field_names = st.sampled_from(["name", "base", "model_family", "model_arch", "model_config", "checkpoint",
                               "checkpoint_format", "sha256", "manifest", "tokenizer", "task", "sampler", "metrics",
                               "description", "chekpoint"])


@FUZZ
@given(st.lists(st.dictionaries(field_names, values, max_size=6), min_size=1, max_size=3))
def test_fuzzed_card_documents_give_cards_or_a_card_error(tmp_path, docs):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump_all(docs), encoding="utf-8")
    _reads_or_refuses(path)


LIMIT = MAX_FILE_BYTES - 64  # room for the lines around the filler


@pytest.mark.parametrize("text", [
    "name: x\nmodel_config: " + "[" * LIMIT,                     # the composer recursed once per level
    "name: x\nmodel_config: {a: [" + "1," * (LIMIT // 2) + "]}",  # the most tokens a file can hold
    "name: x\nmodel_config: {a: 1" + ":59" * (LIMIT // 3) + "}",  # a sexagesimal integer, 60**21000
    "name: x\nmodel_config: {a: 0b" + "1" * LIMIT + "}",
])
def test_the_worst_card_files_within_reach_are_refused_or_read_quickly(tmp_path, text):
    path = tmp_path / "big.yaml"
    path.write_text(text)
    _reads_or_refuses(path)


def test_a_card_file_over_the_size_limit_is_not_even_parsed(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "w") as f:
        f.write("name: x\ndescription: ")
        f.writelines("a" * 1_000_000 for _ in range(20))  # 20 MB: PyYAML would take seconds per lookup
    start = time.perf_counter()
    with pytest.raises(CardError, match=f"{path}: over {MAX_FILE_BYTES} bytes"):
        read_card_file(path)
    assert time.perf_counter() - start < 0.5
