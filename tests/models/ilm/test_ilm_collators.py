import collections

import pytest
import torch

from xlm.data.tokenizers import WordTokenizer
from xlm.models.ilm.collators import (IlmLMCollator, IlmPredictCollator, IlmSeq2SeqCollator, build_train_batch,
                                      sample_drops)

TOK = WordTokenizer([str(i) for i in range(50)])  # "0" -> 7, ..., "49" -> 56; 57 ids in all
V = TOK.vocab_size
PAD, CLS, BOS, EOS = TOK.pad_token_id, TOK.cls_token_id, TOK.bos_token_id, TOK.eos_token_id

EXAMPLES = [{"prompt_ids": [7, 8, 9], "target_ids": [10, 11, 12, 13]},
            {"prompt_ids": [14], "target_ids": [15, 16]}]


def rebuild(batch, row: int) -> list[int]:
    """The row's target, put back together from its kept tokens and its sparse targets."""
    cols = batch["attention_mask"][row].nonzero().flatten().tolist()
    bos_col = int(batch["gap_mask"][row].nonzero()[0])
    kept = {c: [int(batch["input_ids"][row, c])] for c in cols if c >= bos_col}
    mine = batch["target_rows"] == row
    for col, token in zip(batch["target_cols"][mine].tolist(), batch["target_tokens"][mine].tolist()):
        kept[col].append(token)  # dropped tokens follow their gap's token, in order
    return [t for c in sorted(kept) for t in kept[c]][1:]  # without [BOS]


def test_seq2seq_layout_with_fixed_drops():
    batch = IlmSeq2SeqCollator(TOK, max_len=64)(EXAMPLES, drops=[[0, 2, 3], []])
    # [CLS] in column 0, prompts padded after it, [BOS] aligned, kept target tokens right-padded
    assert batch["input_ids"].tolist() == [[CLS, 7, 8, 9, BOS, 11, PAD],
                                           [CLS, PAD, PAD, 14, BOS, 15, 16]]
    assert batch["attention_mask"].tolist() == [[True] * 6 + [False], [True, False, False] + [True] * 4]
    assert batch["gap_mask"].tolist() == [[False] * 4 + [True, True, False], [False] * 4 + [True] * 3]
    # 10 belongs to the gap after [BOS] (column 4); 12 and 13 both to the gap after 11 (column 5)
    assert batch["target_rows"].tolist() == [0, 0, 0]
    assert batch["target_cols"].tolist() == [4, 5, 5]
    assert batch["target_tokens"].tolist() == [10, 12, 13]
    assert batch["target_weights"].tolist() == pytest.approx([1 / 3] * 3)
    assert batch["num_dropped"].tolist() == [3, 0]  # row 1 lost nothing: its stop target is "stop"
    assert rebuild(batch, 0) == [10, 11, 12, 13] and rebuild(batch, 1) == [15, 16]


def test_everything_dropped_leaves_bos_alone():
    batch = IlmSeq2SeqCollator(TOK, max_len=64)(EXAMPLES[1:], drops=[[0, 1]])
    assert batch["input_ids"].tolist() == [[CLS, 14, BOS]]
    assert batch["target_cols"].tolist() == [2, 2] and batch["target_tokens"].tolist() == [15, 16]


def test_lm_rows_keep_the_leading_bos():
    rows = [{"input_ids": [BOS, 7, 8, EOS]}, {"input_ids": [9, 10, EOS, BOS, 11]}]  # the 2nd: a packed block
    batch = IlmLMCollator(TOK, max_len=64)(rows, drops=[[1], [0, 3]])
    assert batch["input_ids"].tolist() == [[CLS, BOS, 7, EOS, PAD], [CLS, BOS, 10, EOS, 11]]
    assert batch["gap_mask"].tolist() == [[False, True, True, True, False], [False] + [True] * 4]
    assert list(zip(batch["target_rows"].tolist(), batch["target_cols"].tolist(),
                    batch["target_tokens"].tolist())) == [(0, 2, 8), (1, 1, 9), (1, 3, BOS)]
    assert rebuild(batch, 0) == [7, 8, EOS] and rebuild(batch, 1) == [9, 10, EOS, BOS, 11]


def test_random_drops_are_sparse_consistent_and_reversible():
    examples = [{"prompt_ids": list(range(7, 7 + p)), "target_ids": list(range(20, 20 + t))}
                for p, t in [(3, 6), (1, 2), (5, 0), (2, 9)]]
    collate = IlmSeq2SeqCollator(TOK, max_len=64)
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        batch = collate(examples, generator=generator)
        for value in batch.values():  # no dense targets: nothing has a vocabulary-sized dimension
            assert value.ndim <= 2 and V not in value.shape
        assert len(batch["target_tokens"]) == int(batch["num_dropped"].sum())
        counts = collections.Counter(batch["target_rows"].tolist())
        for row, ex in enumerate(examples):
            n = int(batch["num_dropped"][row])
            assert counts[row] == n
            assert int(batch["attention_mask"][row].sum()) == 2 + len(ex["prompt_ids"]) + len(ex["target_ids"]) - n
            assert rebuild(batch, row) == ex["target_ids"]
            if n:
                assert batch["target_weights"][batch["target_rows"] == row].sum().item() == pytest.approx(1.0)
        # targets only sit at real gap columns
        assert batch["gap_mask"][batch["target_rows"], batch["target_cols"]].all()


def test_the_number_dropped_is_uniform_over_0_to_L():
    generator = torch.Generator().manual_seed(1)
    counts = collections.Counter(len(sample_drops(4, generator=generator)) for _ in range(5000))
    assert sorted(counts) == [0, 1, 2, 3, 4]
    assert all(abs(c / 5000 - 0.2) < 0.03 for c in counts.values())
    positions = collections.Counter(j for _ in range(3000) for j in sample_drops(4, generator=generator))
    assert all(abs(c / sum(positions.values()) - 0.25) < 0.03 for c in positions.values())
    assert sample_drops(0, generator=generator) == []


def test_generator_makes_drops_reproducible():
    collate = IlmSeq2SeqCollator(TOK, max_len=64)
    a = collate(EXAMPLES, generator=torch.Generator().manual_seed(3))
    b = collate(EXAMPLES, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_predict_collator_seq2seq_and_unconditional():
    collate = IlmPredictCollator(TOK, max_new_tokens=5, max_len=64)
    batch = collate(EXAMPLES)
    assert batch["input_ids"].tolist() == [[CLS, 7, 8, 9, BOS], [CLS, PAD, PAD, 14, BOS]]
    assert batch["attention_mask"].tolist() == [[True] * 5, [True, False, False, True, True]]
    assert batch["gap_mask"].tolist() == [[False] * 4 + [True]] * 2
    assert batch["target_ids"] == [[10, 11, 12, 13], [15, 16]]
    uncond = collate([{}, {}])
    assert uncond["input_ids"].tolist() == [[CLS, BOS]] * 2 and uncond["gap_mask"].tolist() == [[False, True]] * 2
    with pytest.raises(ValueError, match="mixes rows with and without prompt_ids"):
        collate([EXAMPLES[0], {}])


def test_rows_longer_than_the_context_are_refused():
    with pytest.raises(ValueError, match="9 tokens exceeds the model context of 8"):
        IlmSeq2SeqCollator(TOK, max_len=8)(EXAMPLES)  # [CLS] + 3 + [BOS] + 4
    with pytest.raises(ValueError, match="exceeds the model context of 8"):
        IlmPredictCollator(TOK, max_new_tokens=4, max_len=8)(EXAMPLES)
    with pytest.raises(ValueError, match="max_new_tokens"):
        IlmPredictCollator(TOK, max_new_tokens=0, max_len=8)
    with pytest.raises(ValueError, match=r"drop indices \[5\] must be in \[0, 2\)"):
        build_train_batch([[]], [[7, 8]], [[5]], TOK)
