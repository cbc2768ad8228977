import pytest
import torch

from xlm.data.tokenizers import WordTokenizer
from xlm.errors import InvalidValueError
from xlm.models.mlm.collators import MlmLMCollator, MlmPredictCollator, MlmSeq2SeqCollator, sample_mask

TOK = WordTokenizer([str(i) for i in range(10)])  # "0" -> 7, ..., "9" -> 16
BOS, EOS, PAD, MASK = TOK.bos_token_id, TOK.eos_token_id, TOK.pad_token_id, TOK.mask_token_id

EXAMPLES = [{"prompt_ids": [7, 8, 9], "target_ids": [10, 11]},
            {"prompt_ids": [12], "target_ids": [13, 14, 15]}]


def test_seq2seq_layout_block_and_masking():
    batch = MlmSeq2SeqCollator(TOK, block_size=5, max_len=64)(EXAMPLES, generator=torch.Generator().manual_seed(0))
    assert batch["target_ids"].tolist() == [
        [7, 8, 9, BOS, 10, 11, EOS, PAD, PAD],
        [PAD, PAD, 12, BOS, 13, 14, 15, EOS, PAD],
    ]
    assert batch["attention_mask"].tolist() == [[True] * 9, [False, False] + [True] * 7]
    assert batch["maskable"].tolist() == [[False] * 4 + [True] * 5] * 2
    masked = batch["masked"]
    assert not (masked & ~batch["maskable"]).any()  # the prompt and [BOS] are never masked
    assert masked.any(dim=1).all()
    assert torch.equal(batch["input_ids"], batch["target_ids"].masked_fill(masked, MASK))
    assert batch["t"].shape == (2,) and ((batch["t"] >= 0) & (batch["t"] < 1)).all()


def test_a_target_longer_than_the_block_is_refused_naming_the_block_its_longest_needs():
    """It used to be cut to the block: trained and scored as another, shorter target without its [EOS]."""
    collate = MlmSeq2SeqCollator(TOK, block_size=3, max_len=64)
    with pytest.raises(InvalidValueError, match=r"a target of 4 tokens plus \[EOS\] does not fit the generated block "
                                                 r"of sampler.max_new_tokens=3; set sampler.max_new_tokens=5 or more"):
        collate([{"prompt_ids": [7], "target_ids": [10, 11, 12]}, {"prompt_ids": [7], "target_ids": [10, 11, 12, 13]}])
    assert collate([{"prompt_ids": [7], "target_ids": [10, 11]}])["target_ids"].tolist() == [[7, BOS, 10, 11, EOS]]


def test_generator_makes_masking_reproducible():
    collate = MlmSeq2SeqCollator(TOK, block_size=5, max_len=64)
    a = collate(EXAMPLES, generator=torch.Generator().manual_seed(3))
    b = collate(EXAMPLES, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a["masked"], b["masked"]) and torch.equal(a["t"], b["t"])


def test_mask_rate_follows_t_and_every_row_gets_a_mask():
    maskable = torch.ones(4000, 50, dtype=torch.bool)
    maskable[:, :10] = False
    masked, t = sample_mask(maskable, generator=torch.Generator().manual_seed(0))
    assert not masked[:, :10].any()
    assert masked.sum(dim=1).min() >= 1
    rate = masked[:, 10:].float().mean(dim=1)
    # per-row rate tracks t (at least one masked position lifts the smallest t's)
    assert (rate - t).abs().mean() < 0.07
    assert abs(t.mean().item() - 0.5) < 0.02
    # rows drawn with t near 0 still have exactly one masked position
    assert (masked[t < 1e-3].sum(dim=1) == 1).all()


def test_rows_without_maskable_positions_stay_unmasked():
    maskable = torch.tensor([[False, False], [True, True]])
    masked, _ = sample_mask(maskable, generator=torch.Generator().manual_seed(0))
    assert not masked[0].any() and masked[1].any()


def test_lm_rows_are_masked_over_real_tokens_only():
    batch = MlmLMCollator(TOK, max_len=64)([{"input_ids": [BOS, 7, 8, EOS]}, {"input_ids": [BOS, 9]}],
                                            generator=torch.Generator().manual_seed(1))
    assert batch["target_ids"].tolist() == [[BOS, 7, 8, EOS], [BOS, 9, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[True] * 4, [True, True, False, False]]
    assert torch.equal(batch["maskable"], batch["attention_mask"])
    assert not (batch["masked"] & ~batch["attention_mask"]).any()


def test_predict_collator_seq2seq_and_unconditional():
    collate = MlmPredictCollator(TOK, block_size=3, max_len=64)
    batch = collate(EXAMPLES)
    assert batch["input_ids"].tolist() == [[7, 8, 9, BOS, MASK, MASK, MASK],
                                           [PAD, PAD, 12, BOS, MASK, MASK, MASK]]
    assert batch["attention_mask"].tolist() == [[True] * 7, [False, False] + [True] * 5]
    assert batch["block_start"] == 4
    assert batch["target_ids"] == [[10, 11], [13, 14, 15]]

    uncond = collate([{}, {}])
    assert uncond["input_ids"].tolist() == [[MASK] * 3] * 2 and uncond["block_start"] == 0
    with pytest.raises(ValueError, match="mixes rows with and without prompt_ids"):
        collate([EXAMPLES[0], {}])


def test_rows_longer_than_the_context_are_refused():
    with pytest.raises(ValueError, match="exceeds the model context of 6"):
        MlmSeq2SeqCollator(TOK, block_size=3, max_len=6)(EXAMPLES)
    with pytest.raises(ValueError, match="exceeds the model context of 6"):
        MlmPredictCollator(TOK, block_size=3, max_len=6)(EXAMPLES)
    with pytest.raises(ValueError, match="block_size"):
        MlmSeq2SeqCollator(TOK, block_size=0, max_len=6)
