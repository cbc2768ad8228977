import pytest
import torch

from xlm.data.metrics import exact_match, strip_special, token_accuracy


def test_strip_special_lists_and_tensors():
    special = {0, 3, 4}
    assert strip_special([4, 10, 11, 3, 0, 0], special) == [10, 11]
    assert strip_special(torch.tensor([4, 10, 0, 11]), special) == [10, 11]
    assert strip_special((7, 8), frozenset()) == [7, 8]
    out = strip_special(torch.tensor([9, 3]), [3])
    assert out == [9] and type(out[0]) is int


def test_exact_match():
    assert exact_match([1, 2, 3], [1, 2, 3]) == 1.0
    assert exact_match([1, 2], [1, 2, 3]) == 0.0
    assert exact_match([1, 2, 3, 4], [1, 2, 3]) == 0.0
    assert exact_match([1, 3, 2], [1, 2, 3]) == 0.0
    assert exact_match([], []) == 1.0
    assert exact_match(torch.tensor([5, 6]), [5, 6]) == 1.0


def test_token_accuracy_on_hand_examples():
    assert token_accuracy([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert token_accuracy([1, 9, 3, 9], [1, 2, 3, 4]) == 0.5
    # too short: missing positions are errors
    assert token_accuracy([1, 2], [1, 2, 3, 4]) == 0.5
    # too long: extra positions are errors too
    assert token_accuracy([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4]) == 0.5
    assert token_accuracy([], [1, 2]) == 0.0
    assert token_accuracy([1], []) == 0.0
    assert token_accuracy([], []) == 1.0
    assert token_accuracy(["a", "b", "c"], ["a", "x", "c"]) == pytest.approx(2 / 3)
