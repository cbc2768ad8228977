import json

import pytest
import torch

from xlm.data.tokenizers import (
    SPECIAL_TOKENS,
    Tokenizer,
    UnknownTokenError,
    WordTokenizer,
    tokenizer_from_spec,
)

WORDS = [str(i) for i in range(20)]


@pytest.fixture
def tok() -> WordTokenizer:
    return WordTokenizer(WORDS)


def test_special_token_ids_follow_xlm_core(tok):
    assert (tok.pad_token_id, tok.cls_token_id, tok.mask_token_id, tok.eos_token_id,
            tok.bos_token_id, tok.sep_token_id, tok.unk_token_id) == (0, 1, 2, 3, 4, 5, 6)
    assert tok.special_ids == frozenset(range(7))
    assert [tok.id_to_token(i) for i in range(7)] == list(SPECIAL_TOKENS)
    assert SPECIAL_TOKENS == ("[PAD]", "[CLS]", "[MASK]", "[EOS]", "[BOS]", "[SEP]", "[UNK]")


def test_words_start_at_id_7_in_order(tok):
    assert tok.vocab_size == 27
    assert tok.encode("0 1 19") == [7, 8, 26]
    assert WordTokenizer(["b", "a"]).encode("a b") == [8, 7]


def test_satisfies_protocol(tok):
    assert isinstance(tok, Tokenizer)


def test_encode_decode_round_trip(tok):
    text = "3 8 8 14 14 5"
    ids = tok.encode(text)
    assert ids == [10, 15, 15, 21, 21, 12]
    assert tok.decode(ids) == text
    # extra whitespace is normalised to single spaces
    assert tok.decode(tok.encode("  3\t8\n 14 ")) == "3 8 14"
    assert tok.encode("") == [] and tok.decode([]) == ""


def test_special_strings_encode_and_skip_on_decode(tok):
    ids = tok.encode("[BOS] 3 4 [SEP] 5 [EOS] [PAD]")
    assert ids == [4, 10, 11, 5, 12, 3, 0]
    assert tok.decode(ids) == "3 4 5"
    assert tok.decode(ids, skip_special_tokens=False) == "[BOS] 3 4 [SEP] 5 [EOS] [PAD]"


def test_decode_accepts_tensor(tok):
    assert tok.decode(torch.tensor([4, 10, 11, 3])) == "3 4"
    assert tok.decode_batch(torch.tensor([[10, 0], [11, 12]])) == ["3", "4 5"]
    assert tok.encode_batch(["1", "2 3"]) == [[8], [9, 10]]


def test_unknown_word_error_names_word_position_and_vocab(tok):
    with pytest.raises(UnknownTokenError) as info:
        tok.encode("1 2 3 99 4", context="prompt")
    msg = str(info.value)
    assert "'99'" in msg and "position 3" in msg and "in prompt" in msg
    assert "knows 27 words" in msg and "[PAD]" in msg and "19" in msg
    assert info.value.words == ["99"] and info.value.positions == [3]
    assert isinstance(info.value, ValueError)


def test_unknown_words_all_reported_and_never_unk(tok):
    with pytest.raises(UnknownTokenError) as info:
        tok.encode("x 1 y")
    assert info.value.words == ["x", "y"] and info.value.positions == [0, 2]
    assert "'x'" in str(info.value) and "'y'" in str(info.value)


def test_decode_out_of_range_id(tok):
    with pytest.raises(ValueError, match="27"):
        tok.decode([7, 27])
    with pytest.raises(ValueError, match="-1"):
        tok.decode([-1])


def test_bad_vocabularies():
    with pytest.raises(ValueError, match="duplicate"):
        WordTokenizer(["a", "b", "a"])
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        WordTokenizer(["a", "[MASK]"])
    with pytest.raises(ValueError):
        WordTokenizer(["a b"])
    with pytest.raises(TypeError):
        WordTokenizer("abc")


def test_spec_round_trip(tok):
    spec = tok.spec()
    assert spec == {"kind": "word", "words": WORDS}
    rebuilt = tokenizer_from_spec(json.loads(json.dumps(spec)))
    assert isinstance(rebuilt, WordTokenizer)
    assert rebuilt == tok
    assert rebuilt.encode("5 [SEP] 6") == tok.encode("5 [SEP] 6")
    assert rebuilt != WordTokenizer(WORDS[::-1])


def test_spec_unknown_kind_lists_known():
    with pytest.raises(ValueError, match="word"):
        tokenizer_from_spec({"kind": "sentencepiece2"})
    with pytest.raises(ValueError, match="words"):
        tokenizer_from_spec({"kind": "word"})
