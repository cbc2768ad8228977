import math

import pytest
import torch

from xlm.nn import RotaryEmbedding


def rotate(rope: RotaryEmbedding, vec: torch.Tensor, position: int) -> torch.Tensor:
    """Rotate one head vector (head_dim,) at one position."""
    return rope(vec.view(1, 1, 1, -1), torch.tensor([[position]]))[0, 0, 0]


def test_scores_depend_only_on_position_difference():
    torch.manual_seed(0)
    rope = RotaryEmbedding(16, max_len=8)
    q, k = torch.randn(16), torch.randn(16)
    for offset in (3, -2):
        scores = [rotate(rope, q, m) @ rotate(rope, k, m - offset) for m in (5, 11, 40)]
        for s in scores[1:]:
            assert torch.allclose(s, scores[0], atol=1e-5)
    # and a different offset gives a different score, so the check above is not vacuous
    assert not torch.allclose(rotate(rope, q, 5) @ rotate(rope, k, 2), rotate(rope, q, 5) @ rotate(rope, k, 4))


def test_half_split_matches_hand_computation():
    rope = RotaryEmbedding(4, base=10000.0)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = rotate(rope, x, 1)
    # inv_freq = [1, 1/100]; halves x1 = (1, 2), x2 = (3, 4); rotate_half = (-3, -4, 1, 2)
    c0, s0, c1, s1 = math.cos(1.0), math.sin(1.0), math.cos(0.01), math.sin(0.01)
    expected = torch.tensor([1 * c0 - 3 * s0, 2 * c1 - 4 * s1, 3 * c0 + 1 * s0, 4 * c1 + 2 * s1])
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.equal(rotate(rope, x, 0), x)


def test_partial_rotary_leaves_tail_untouched():
    torch.manual_seed(0)
    rope = RotaryEmbedding(16, rotary_dim=8)
    x = torch.randn(2, 3, 5, 16)
    positions = torch.arange(1, 6).expand(2, 5)
    out = rope(x, positions)
    assert torch.equal(out[..., 8:], x[..., 8:])
    assert not torch.allclose(out[..., :8], x[..., :8])
    assert torch.allclose(out[..., :8], RotaryEmbedding(8)(x[..., :8], positions))


def test_per_row_positions_and_table_growth():
    torch.manual_seed(0)
    small, large = RotaryEmbedding(8, max_len=4), RotaryEmbedding(8, max_len=512)
    x = torch.randn(2, 1, 3, 8)
    positions = torch.tensor([[0, 1, 2], [100, 101, 300]])
    out = small(x, positions)
    assert torch.allclose(out, large(x, positions))
    assert torch.allclose(out[1, 0, 0], rotate(large, x[1, 0, 0], 100))
    assert torch.allclose(out[0, 0, 0], x[0, 0, 0])


def test_reused_positions_modified_in_place_are_looked_up_again():
    rope = RotaryEmbedding(4)
    x = torch.ones(1, 1, 2, 4)
    positions = torch.tensor([[0, 1]])
    first = rope(x, positions)
    positions += 5
    assert not torch.allclose(rope(x, positions), first)
    assert torch.allclose(rope(x, positions), RotaryEmbedding(4)(x, torch.tensor([[5, 6]])))


def test_keeps_fp32_tables_and_no_state():
    rope = RotaryEmbedding(8)
    assert rope.state_dict() == {}
    x = torch.randn(1, 1, 4, 8).bfloat16()
    out = rope(x, torch.arange(4)[None])
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), rope(x.float(), torch.arange(4)[None]), atol=1e-2)


@pytest.mark.parametrize("rotary_dim", [0, 3, 10])
def test_rejects_bad_rotary_dim(rotary_dim):
    with pytest.raises(ValueError, match="rotary_dim"):
        RotaryEmbedding(8, rotary_dim=rotary_dim)
