"""The padding and context check every family's collators build on."""

import pytest
import torch

from xlm.data.collate import check_fits, pad_rows


def test_right_and_left_padding_place_the_rows_and_their_masks():
    ids, mask = pad_rows([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[True] * 3, [True, False, False]]
    ids, mask = pad_rows([[5, 6, 7], [8]], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[True] * 3, [False, False, True]]
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    with pytest.raises(ValueError, match="side must be one of \\('left', 'right'\\), got 'top'"):
        pad_rows([[1]], pad_id=0, side="top")


def test_a_row_longer_than_the_context_names_the_knobs():
    check_fits(8, 8, "a row")
    with pytest.raises(ValueError, match=r"a row of 9 tokens exceeds the model context of 8; raise model.max_seq_len "
                                         r"or shorten the data \(or sampler.max_new_tokens\)$"):
        check_fits(9, 8, "a row", also=" (or sampler.max_new_tokens)")
