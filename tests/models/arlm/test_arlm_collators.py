
import pytest

from xlm.data.tokenizers import WordTokenizer
from xlm.errors import InvalidValueError
from xlm.models.arlm.collators import (IGNORE_INDEX, ArlmContinuationPredictCollator, ArlmLMCollator,
                                       ArlmSeq2SeqCollator, ArlmSeq2SeqPredictCollator)

TOK = WordTokenizer([str(i) for i in range(10)])  # "0" -> 7, ..., "9" -> 16
BOS, EOS, PAD = TOK.bos_token_id, TOK.eos_token_id, TOK.pad_token_id


def test_seq2seq_rows_and_labels():
    batch = ArlmSeq2SeqCollator(TOK, 64)([
        {"prompt_ids": [7, 8, 9], "target_ids": [10, 11]},
        {"prompt_ids": [12], "target_ids": [13]},
    ])
    assert batch["input_ids"].tolist() == [
        [7, 8, 9, BOS, 10, 11, EOS],
        [12, BOS, 13, EOS, PAD, PAD, PAD],
    ]
    assert batch["attention_mask"].tolist() == [[True] * 7, [True] * 4 + [False] * 3]
    IG = IGNORE_INDEX
    # the token after [BOS] and every later target token and the closing [EOS] are labelled
    assert batch["labels"].tolist() == [
        [IG, IG, IG, 10, 11, EOS, IG],
        [IG, 13, EOS, IG, IG, IG, IG],
    ]


def test_predict_collator_left_pads_and_keeps_targets_aside():
    batch = ArlmSeq2SeqPredictCollator(TOK, 64)([
        {"prompt_ids": [7, 8, 9], "target_ids": [10]},
        {"prompt_ids": [12], "target_ids": [13, 14]},
    ])
    assert batch["input_ids"].tolist() == [[7, 8, 9, BOS], [PAD, PAD, 12, BOS]]
    assert batch["attention_mask"].tolist() == [[True] * 4, [False, False, True, True]]
    assert batch["target_ids"] == [[10], [13, 14]]


def test_continuation_prompts_are_left_padded_as_they_are():
    batch = ArlmContinuationPredictCollator(TOK, 64)([{"prompt_ids": [7, 8, 9]}, {"prompt_ids": [12]}])
    assert batch["input_ids"].tolist() == [[7, 8, 9], [PAD, PAD, 12]]
    assert batch["attention_mask"].tolist() == [[True] * 3, [False, False, True]]
    assert batch["target_ids"] == [[], []]
    with pytest.raises(InvalidValueError, match="an empty prompt has nothing to continue"):
        ArlmContinuationPredictCollator(TOK, 64)([{"prompt_ids": []}])
    with pytest.raises(ValueError, match="exceeds the model context of 2"):
        ArlmContinuationPredictCollator(TOK, 2)([{"prompt_ids": [7, 8, 9]}])


def test_lm_collator_shifts_labels_and_ignores_padding():
    batch = ArlmLMCollator(TOK, 64)([{"input_ids": [BOS, 7, 8, EOS]}, {"input_ids": [BOS, 9]}])
    IG = IGNORE_INDEX
    assert batch["labels"].tolist() == [[7, 8, EOS, IG], [9, IG, IG, IG]]


def test_rows_longer_than_the_context_are_refused():
    import pytest

    with pytest.raises(ValueError, match="exceeds the model context of 4"):
        ArlmSeq2SeqCollator(TOK, 4)([{"prompt_ids": [7, 8, 9], "target_ids": [10]}])
