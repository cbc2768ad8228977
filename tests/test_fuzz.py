"""Fuzzed inputs: only the documented error types, with messages, ever escape the tokenizer, the
collators, the card parser and the config overrides."""

import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xlm
from xlm.assets.card import CardError, card_from_mapping
from xlm.data.tokenizers import UnknownTokenError, WordTokenizer
from xlm.recipes.config import ConfigError, build_config
from xlm.registry import UnknownNameError

TOK = WordTokenizer([str(i) for i in range(30)])
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.text(max_size=40))
def test_tokenizer_encode_raises_only_unknown_token_errors(text):
    try:
        ids = TOK.encode(text)
    except UnknownTokenError as err:
        assert str(err) and err.words
        return
    assert TOK.encode(TOK.decode(ids)) == ids


@FAST
@given(st.lists(st.integers(min_value=-5, max_value=60), max_size=20))
def test_tokenizer_decode_raises_only_value_errors(ids):
    try:
        TOK.decode(ids)
    except ValueError as err:
        assert "out of range" in str(err) or str(err)


rows = st.lists(st.integers(min_value=7, max_value=36), max_size=12)


@FAST
@given(st.sampled_from(["arlm_tiny", "mlm_tiny", "mdlm_tiny", "ilm_tiny"]),
       st.lists(st.tuples(rows, rows), min_size=1, max_size=4), st.integers(min_value=1, max_value=20))
def test_collators_accept_any_rows_or_say_why(arch, examples, block):
    family = xlm.get_family(xlm.list_archs()[arch])
    model = xlm.create_model(arch, vocab_size=TOK.vocab_size, max_seq_len=24)
    unit = family.unit_factory(model, TOK, family.sampler_config_class(max_new_tokens=block))
    batch = [{"prompt_ids": p, "target_ids": t} for p, t in examples]
    for collate in (unit.collate_train, unit.collate_predict):
        try:
            out = collate(batch)
        except ValueError as err:
            assert any(w in str(err) for w in ("exceeds", "does not fit", "block", "context")), str(err)
            continue
        assert isinstance(out, dict) and out


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8), st.floats(allow_nan=False))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                            max_size=3), max_leaves=6)


@FAST
@given(st.dictionaries(st.sampled_from(["name", "base", "model_family", "model_config", "checkpoint", "sha256",
                                        "tokenizer", "chekpoint", "sampler", "task"]), values, max_size=6))
def test_card_parser_raises_only_card_errors(data):
    try:
        card = card_from_mapping(data, "fuzz.yaml")
    except CardError as err:
        assert "fuzz.yaml" in str(err)
        return
    assert card.name == data["name"]


@FAST
@given(st.text(alphabet=string.printable, max_size=80))
def test_card_files_raise_only_card_errors(tmp_path_factory, text):
    from xlm.assets.card import read_card_file

    path = tmp_path_factory.mktemp("cards") / "c.yaml"
    path.write_text(text)
    try:
        read_card_file(path)
    except CardError as err:
        assert str(path) in str(err)


keys = st.sampled_from(["optim.lr", "optim.lrr", "trainer.max_steps", "data.batch_size", "model.num_layers",
                        "sampler.top_p", "trainer.on_nonfinite", "task.seed", "nope", "model"])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # each compose is ~1 s
@given(st.lists(st.tuples(keys, st.text(alphabet=string.ascii_letters + string.digits + ".-_[]{}:,", max_size=8)),
                max_size=3))
def test_config_overrides_raise_only_config_errors(pairs):
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        build_config(family=xlm.get_family("arlm"), arch="arlm_tiny", task="star_easy", output_dir="x",
                     overrides=overrides)
    except (ConfigError, UnknownNameError) as err:
        assert str(err) and "\n" not in str(err), str(err)


def test_yaml_card_round_trip_is_stable(tmp_path):
    from xlm.assets.card import read_card_file

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "model_config": {"a": 1}}))
    assert read_card_file(path)[0].model_config == {"a": 1}
    with pytest.raises(CardError):
        card_from_mapping([1, 2], "list.yaml")
