import pytest
import torch
import torch.nn.functional as F

from xlm.nn.cross_entropy import consuming_cross_entropy


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_torch_cross_entropy_in_loss_and_gradient(reduction: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    weight = torch.randn(16, 8, dtype=dtype, requires_grad=True)
    hidden = torch.randn(37, 8, dtype=dtype)
    target = torch.randint(0, 16, (37,))
    grad_out = torch.rand(37, dtype=dtype) if reduction == "none" else torch.tensor(1.7, dtype=dtype)

    ref = F.cross_entropy(hidden @ weight.t(), target, reduction=reduction)
    (ref_grad,) = torch.autograd.grad(ref, weight, grad_out)
    ours = consuming_cross_entropy(hidden @ weight.t(), target, reduction=reduction)
    (our_grad,) = torch.autograd.grad(ours, weight, grad_out)

    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(ours, ref, **tol)
    torch.testing.assert_close(our_grad, ref_grad, **tol)


def test_extreme_logits_keep_an_exact_loss() -> None:
    # the target's probability underflows float32: the loss must still be the exact log-sum-exp gap
    logits = torch.tensor([[0.0, 200.0, -50.0], [1e4, 1e4, 1e4]])
    target = torch.tensor([2, 1])
    expected = F.cross_entropy(logits, target, reduction="none")
    torch.testing.assert_close(consuming_cross_entropy(logits.clone(), target, reduction="none"), expected)
    assert torch.isfinite(expected).all() and expected[0] > 249


def test_overwrites_its_logits_and_allows_one_backward() -> None:
    weight = torch.randn(5, 3, requires_grad=True)
    logits = torch.randn(4, 3) @ weight.t()
    before = logits.detach().clone()
    loss = consuming_cross_entropy(logits, torch.tensor([0, 1, 2, 3]))
    torch.testing.assert_close(logits.detach(), before.softmax(-1))  # the softmax lives in the logits now
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward can run once"):
        loss.backward()


def test_a_saved_logits_tensor_is_protected_by_autograd() -> None:
    # an op that saved the logits for its own backward sees them modified and autograd refuses
    x = torch.randn(4, 5, requires_grad=True)
    logits = x.exp()  # exp saves its output
    loss = consuming_cross_entropy(logits, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize(("logits", "target", "match"), [
    (torch.randn(4, 5), torch.tensor([0, 1, 5, 2]), r"targets must lie in \[0, 5\), got 0\.\.5"),
    (torch.randn(4, 5), torch.tensor([0, -100, 1, 2]), "there is no ignore_index"),
    (torch.randn(2, 4, 5), torch.tensor([0, 1]), r"expected logits \(rows, vocab\)"),
    (torch.randn(4, 5), torch.tensor([0, 1, 2, 3], dtype=torch.int32), "int64 targets"),
])
def test_bad_input_is_named(logits: torch.Tensor, target: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        consuming_cross_entropy(logits, target)
