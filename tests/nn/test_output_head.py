import pytest
import torch

from xlm.nn import select_positions


@pytest.mark.parametrize("contiguous", [True, False])
def test_select_positions_matches_boolean_indexing_in_values_order_and_gradient(contiguous: bool) -> None:
    torch.manual_seed(0)
    base = torch.randn(3, 5, 4) if contiguous else torch.randn(5, 3, 4).transpose(0, 1)
    mask = torch.rand(3, 5) > 0.4
    grad = torch.randn(int(mask.sum()), 4)
    ours, ref = (base.clone().requires_grad_() for _ in range(2))
    selected = select_positions(ours, mask)
    torch.testing.assert_close(selected, ref[mask], rtol=0, atol=0)
    selected.backward(grad)
    ref[mask].backward(grad)
    torch.testing.assert_close(ours.grad, ref.grad, rtol=0, atol=0)


def test_select_positions_without_mask_is_identity_and_checks_shape() -> None:
    hidden = torch.randn(2, 3, 4)
    assert select_positions(hidden, None) is hidden
    with pytest.raises(ValueError, match=r"shape of input_ids \(2, 3\)"):
        select_positions(hidden, torch.ones(2, 4, dtype=torch.bool))
